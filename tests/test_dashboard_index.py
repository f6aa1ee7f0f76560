"""The dashboard's index follows group records rewritten member by member: what it keeps
current equals one fresh listing, whether the last value of a key is still decoded
(``Recent``) or has to be decoded again from its bytes."""

from __future__ import annotations

import random
import time

import pytest

from openrange_mesh.dashboard.index import EpisodeIndex, Recent
from openrange_mesh.keys import Keys
from openrange_mesh.model import EpisodeRecord
from openrange_mesh.model.record import encode_group
from openrange_mesh.registry import Registry
from openrange_mesh.registry.base import Put

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
