"""Made-up episode lives for the Tally's tests: each a list of the records a watch would bring."""

from __future__ import annotations

import random

from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State

SPEC = EpisodeSpec("sleep")
HOSTS = ("h1", "h2", "h3")
ERRORS = (
    "timed out after {n} s",
    "exit status {n}\nTraceback (most recent call last): ...",
    "worker 0x{h:x} died (signal {n})",
    "ValueError: bad observation at step {n}",
)


def life(rng: random.Random, index: int, t0: float) -> list[EpisodeRecord]:
    """The successive records of one episode: created, then attempts (some retried or
    released), then an end (succeeded, failed, cancelled, lost) or still pending/running."""
    record = EpisodeRecord(f"{index:010d}-0000-t", SPEC, created_at=t0, submitter="trainer")
    records = [record]
    t = t0 + rng.uniform(0, 5)
    if rng.random() < 0.05:  # cancelled while pending
        records.append(record.replace(state=State.CANCELLED, finished_at=t, error="cancelled (asked)"))
        return records
    history: tuple[Attempt, ...] = ()
    for n in range(1, 4):
        host = rng.choice(HOSTS)
        history = (*history, Attempt(n, host, t))
        record = record.replace(state=State.RUNNING, attempt=n, owner=host, started_at=t, history=history)
        records.append(record)
        if rng.random() < 0.03:
            return records  # still running
        end = t + rng.lognormvariate(0, 1.5)
        roll = rng.random()
        if roll < 0.2 and n < 3:  # a retry (timeout, dead host) or a release
            outcome = rng.choice(["retried", "released"])
            history = (*history[:-1], Attempt(n, host, t, end, outcome, "host died"))
            record = record.replace(state=State.PENDING, attempt=n + 1, owner=None, started_at=None, history=history)
            records.append(record)
            t = end + rng.uniform(0, 2)
            continue
        state = State.SUCCEEDED if roll < 0.7 else State.FAILED if roll < 0.95 else State.LOST
        error = None if state is State.SUCCEEDED else rng.choice(ERRORS).format(n=rng.randint(1, 999), h=index)
        history = (*history[:-1], Attempt(n, host, t, end, state.value, error))
        records.append(record.replace(state=state, owner=None, finished_at=end, error=error, history=history))
        return records
    return records


def lives(seed: int, count: int, t0: float, spread: float) -> list[list[EpisodeRecord]]:
    rng = random.Random(seed)
    return [life(rng, i, t0 + rng.uniform(0, spread)) for i in range(count)]


def interleaved(all_lives: list[list[EpisodeRecord]], seed: int) -> list[tuple[EpisodeRecord | None, EpisodeRecord]]:
    """Every change of every life as (old, new), lives interleaved at random, each in order."""
    rng = random.Random(seed)
    cursors = [0] * len(all_lives)
    live = list(range(len(all_lives)))
    changes: list[tuple[EpisodeRecord | None, EpisodeRecord]] = []
    while live:
        k = rng.randrange(len(live))
        i = live[k]
        step = cursors[i]
        changes.append((all_lives[i][step - 1] if step else None, all_lives[i][step]))
        cursors[i] += 1
        if cursors[i] == len(all_lives[i]):
            live[k] = live[-1]
            live.pop()
    return changes
