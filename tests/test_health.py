"""Health's decisions, in-process with a clock we move by hand."""

from __future__ import annotations

from openrange_mesh.agent.health import FAULT_LIMIT, FAULT_WINDOW, RECHECK, RECHECK_MAX, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_few_faults_in_a_short_while_make_a_host_sick_one_does_not() -> None:
    clock = Clock()
    health = Health(clock)
    for _ in range(FAULT_LIMIT - 1):
        assert not health.fault("store refused events")
        clock.now += FAULT_WINDOW  # spread out: never FAULT_LIMIT within the window
    assert not health.fault("store refused events") and not health.is_sick
    assert health.fault("x") and health.is_sick  # the last FAULT_LIMIT are within one window now
    clock.now += 1
    health = Health(clock)
    assert [health.fault(f"fault {i}") for i in range(FAULT_LIMIT)] == [False] * (FAULT_LIMIT - 1) + [True]
    assert health.is_sick and health.reason == f"fault {FAULT_LIMIT - 1}"
    assert not health.fault("more")  # already sick: no second verdict


def test_a_sick_host_rechecks_with_backoff_and_heals() -> None:
    clock = Clock()
    health = Health(clock)
    for _ in range(FAULT_LIMIT):
        health.fault("worker could not start")
    assert not health.recheck_due()
    clock.now += RECHECK
    assert health.recheck_due()
    waits = []
    for _ in range(6):
        assert not health.rechecked("still broken")
        start = clock.now
        while not health.recheck_due():
            clock.now += 0.5
        waits.append(clock.now - start)
    assert waits == sorted(waits) and waits[-1] == RECHECK_MAX and health.reason == "still broken"
    assert health.rechecked(None) and not health.is_sick and not health.recheck_due()
    assert not health.fault("one more")  # the slate is clean: one fault is not a verdict
