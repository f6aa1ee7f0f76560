"""A client's placement (ledger/placement.py ``Spread``): a run dealt over the hosts in
proportion to their weights, in runs of a host's weight, each host within one run of its share."""

from __future__ import annotations

from collections import Counter
from itertools import groupby

from openrange_mesh.ledger.placement import UNOWNED, Spread


def dealt(spread: Spread, count: int) -> Counter[str]:
    return Counter(spread(f"e{i}") for i in range(count))


def test_a_run_that_fills_every_slot_gives_each_host_exactly_its_share() -> None:
    spread = Spread()
    spread.load({f"h{i}": 4 for i in range(48)})
    assert set(dealt(spread, 960).values()) == {20}  # rendezvous hashing gave 10 to 30


def test_shares_follow_weights_within_one_run_at_every_length() -> None:
    weights = {"a": 8, "b": 4, "c": 2, "d": 2}
    for count in (1, 7, 16, 101, 1000):
        spread = Spread()
        spread.load(weights)
        counts = dealt(spread, count)
        for host, weight in weights.items():
            assert abs(counts[host] - count * weight / 16) <= weight, (count, host, counts)
        if count % 16 == 0:  # whole runs of every host: shares exactly
            assert all(counts[host] == count * weight // 16 for host, weight in weights.items()), counts


def test_a_host_gets_a_run_of_its_capacity_so_one_claim_fills_its_workers() -> None:
    spread = Spread()
    spread.load({"a": 4, "b": 2, "c": 1})
    hosts = [spread(f"e{i}") for i in range(14)]
    runs = [(host, len(list(run))) for host, run in groupby(hosts)]
    assert sorted(runs[:3]) == [("a", 4), ("b", 2), ("c", 1)], hosts  # each host once, a run each
    assert sorted(runs[3:]) == [("a", 4), ("b", 2), ("c", 1)], hosts


def test_a_host_that_leaves_mid_run_leaves_the_rest_of_it_to_the_others() -> None:
    spread = Spread()
    spread.load({"a": 4, "b": 4})
    first = spread("e0")
    spread.load({"a": 4, "b": 4} | {first: 0})
    assert {spread(f"e{i}") for i in range(1, 9)} == {"b" if first == "a" else "a"}


def test_hosts_without_weight_get_nothing_and_no_host_means_unowned() -> None:
    spread = Spread()
    spread.load({"a": 2, "draining": 0})
    assert set(dealt(spread, 10)) == {"a"}
    spread.load({"a": 0})
    assert spread("e") == UNOWNED


def test_a_newcomer_gets_its_share_of_what_follows_not_of_what_it_missed() -> None:
    spread = Spread()
    spread.load({"a": 1, "b": 1})
    dealt(spread, 100)
    spread.load({"a": 1, "b": 1, "new": 1})
    assert set(dealt(spread, 30).values()) == {10}


def test_clients_start_at_different_hosts() -> None:
    """Ties are broken in an order drawn per client, so many small submissions from many
    clients do not all land on one host."""
    firsts = set()
    for _ in range(40):
        spread = Spread()
        spread.load({f"h{i}": 1 for i in range(8)})
        firsts.add(spread("e"))
    assert len(firsts) > 3
