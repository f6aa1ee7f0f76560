"""The dashboard's index follows group records rewritten member by member: what it keeps
current equals one fresh listing, whether the last value of a key is still decoded
(``Recent``) or has to be decoded again from its bytes."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from openrange_mesh.dashboard.answers import wait_index
from openrange_mesh.dashboard.config import DashboardConfig
from openrange_mesh.dashboard.index import EpisodeIndex, Recent
from openrange_mesh.dashboard.state import State
from openrange_mesh.keys import Keys
from openrange_mesh.model import EpisodeRecord, encode_group
from openrange_mesh.registry import Registry
from openrange_mesh.registry.base import Put

from .helpers import wait_until
from .tallykit import lives

NOW = 1_800_000_000.0
GROUPS, WIDTH = 12, 25


def wait_for(index: EpisodeIndex, revision: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while index.revision < revision:
        assert time.monotonic() < deadline, f"the index stayed at {index.revision}, not {revision}"
        time.sleep(0.02)


def comparable(index: EpisodeIndex) -> dict[str, object]:
    summary = index.summary({})
    summary.pop("revision")
    return summary


@pytest.mark.parametrize("recent", [0, 60, 10_000], ids=["none-kept", "some-kept", "all-kept"])
def test_a_followed_index_equals_a_fresh_listing(registry: Registry, keys: Keys, recent: int) -> None:
    rng = random.Random(7)
    all_lives = lives(seed=3, count=GROUPS * WIDTH, t0=NOW - 600, spread=500)
    groups = [all_lives[g * WIDTH : (g + 1) * WIDTH] for g in range(GROUPS)]
    followed = EpisodeIndex(registry, keys, recent_records=recent, coalesce=0.01)
    followed.start()
    try:
        assert followed.ready.wait(20)
        steps = [[0] * WIDTH for _ in groups]
        while any(s < len(life) - 1 for g, group in enumerate(groups) for s, life in zip(steps[g], group, strict=True)):
            # a round: some groups rewritten, some of their members a step further each, then
            # followed, so the next round's rewrites find these values as the ones before
            ops = []
            for g in rng.sample(range(GROUPS), GROUPS // 2):
                for m, life in enumerate(groups[g]):
                    if steps[g][m] < len(life) - 1 and rng.random() < 0.6:
                        steps[g][m] += 1
                members = [life[s] for life, s in zip(groups[g], steps[g], strict=True)]
                ops.append(Put(keys.episode(f"{g:010d}-0000-g"), encode_group(members)))
            wait_for(followed, registry.txn([], ops).revision)
        fresh = EpisodeIndex(registry, keys)
        fresh.start()
        try:
            assert fresh.ready.wait(20)
            assert comparable(followed) == comparable(fresh)
            assert followed.count() == fresh.count() == GROUPS * WIDTH
            finals: list[EpisodeRecord] = [life[-1] for life in all_lives]
            assert {r.id: r.state.value for r in finals} == {
                r.id: s.state for r in finals if (s := followed.get(r.id)) is not None
            }
        finally:
            fresh.stop()
    finally:
        followed.stop()


def test_recent_keeps_the_keys_written_last_within_its_bound() -> None:
    def records(n: int, tag: str) -> list[EpisodeRecord]:
        return [life[0] for life in lives(seed=len(tag), count=n, t0=NOW, spread=1)]

    recent = Recent(limit=10)
    recent.put(b"a", records(4, "a"))
    recent.put(b"b", records(4, "bb"))
    recent.put(b"c", records(4, "ccc"))  # 12 > 10: the oldest written (a) goes
    assert recent.pop(b"a") is None
    assert recent.pop(b"b") is not None and recent.pop(b"b") is None
    recent.put(b"d", records(11, "dddd"))  # wider than the bound: not kept, nothing else lost
    assert recent.pop(b"d") is None
    c = recent.pop(b"c")
    assert c is not None and len(c) == 4


class Serving:
    """What the agent's shared cell says: whether it leads."""

    def __init__(self) -> None:
        self.leads = True

    def __bool__(self) -> bool:
        return self.leads


def test_the_index_is_built_when_asked_kept_while_asked_and_dropped_after(registry: Registry, keys: Keys) -> None:
    members = [life[-1] for life in lives(seed=5, count=WIDTH, t0=NOW - 60, spread=30)]
    registry.txn([], [Put(keys.episode("0000000001-0000-g"), encode_group(members))])
    config = DashboardConfig("", keys.namespace, "h1", "", "127.0.0.1", 0, index_keep=1.0)
    serving = Serving()
    state = State(config, serving, registry, None)
    state.start()
    try:
        time.sleep(0.5)  # a few of the serving thread's looks: nobody asked, so nothing is followed
        assert state.index is None
        index = asyncio.run(wait_index(state))
        assert index.count() == WIDTH
        until = time.monotonic() + 2 * config.index_keep
        while time.monotonic() < until:  # asked more often than index_keep: the same index goes on
            state.want_index()
            time.sleep(0.1)
        assert state.index is index
        wait_until(lambda: state.index is None, timeout=5)  # nobody asked for index_keep: dropped
        again = asyncio.run(wait_index(state))
        assert again is not index and again.count() == WIDTH and comparable(again) == comparable(index)
        serving.leads = False  # deposed: dropped, however recently asked
        state.want_index()
        wait_until(lambda: state.index is None, timeout=5)
    finally:
        state.stop()
