"""Queue ownership (ledger/owners.py): weighted rendezvous hashing over the live hosts; a dead
host's heir on a hash ring of them."""

from __future__ import annotations

from collections import Counter

from openrange_mesh.ledger.owners import Ring, heir, owner

NAMES = [f"{revision:010x}-{seq:04x}-trainer.1" for revision in range(40) for seq in range(100)]


def shares(weights: dict[str, float]) -> dict[str | None, float]:
    counts = Counter(owner(name, weights) for name in NAMES)
    return {host: count / len(NAMES) for host, count in counts.items()}


def test_hosts_own_shares_proportional_to_their_weights() -> None:
    for weights in ({"a": 4, "b": 4}, {"a": 1, "b": 1, "c": 1}, {"h1": 8, "h2": 2}, {"x": 2, "y": 1, "z": 1}):
        total = sum(weights.values())
        for host, share in shares(weights).items():
            assert host is not None
            assert abs(share - weights[host] / total) < 0.03, (weights, host, share)


def test_the_owner_in_a_set_owns_in_every_subset_that_holds_it() -> None:
    """A host joining takes entries and gives none, so peers only drop entries when one joins."""
    everyone = {"h1": 2, "h2": 4, "h3": 1, "h4": 2}
    for name in NAMES[:500]:
        top = owner(name, everyone)
        assert top is not None
        for gone in everyone:
            if gone != top:
                assert owner(name, {h: w for h, w in everyone.items() if h != gone}) == top


def test_hosts_without_weight_own_nothing() -> None:
    assert set(shares({"a": 2, "draining": 0})) == {"a"}
    assert owner(NAMES[0], {"a": 0, "b": 0}) is None
    assert owner(NAMES[0], {}) is None


def test_ownership_depends_on_nothing_but_names_and_weights() -> None:
    """Every agent computes it alone and they must agree: no process-local state (str hash seeds)."""
    first = [owner(name, {"h1": 2, "h2": 2, "h3": 2}) for name in NAMES[:200]]
    assert first == [owner(name, {"h3": 2, "h1": 2, "h2": 2}) for name in NAMES[:200]]
    assert owner("0000000001-0001-trainer.1", {"h1": 2, "h2": 2, "h3": 2}) == "h3"  # in every process, on every machine


HOSTS = [f"host-{i}" for i in range(100)]


def test_every_agent_names_the_same_heir_a_live_host_other_than_the_dead() -> None:
    for dead in HOSTS[:40]:
        named = heir(dead, HOSTS)
        assert named in HOSTS and named != dead
        assert heir(dead, reversed(HOSTS)) == named == heir(dead, [h for h in HOSTS if h != dead])
    assert heir("gone", []) is None and heir("gone", ["gone"]) is None
    assert heir("gone", ["only"]) == "only"


def test_a_ring_kept_by_joins_and_departures_names_the_heir_a_fresh_one_would() -> None:
    ring = Ring(["host-0"])
    for host in HOSTS:
        ring.add(host)
    ring.add("host-3")  # twice: no second point
    for host in HOSTS[::3]:
        ring.remove(host)
    ring.remove("never-there")
    live = [h for i, h in enumerate(HOSTS) if i % 3]
    assert all(ring.heir(dead) == heir(dead, live) for dead in [*HOSTS, "elsewhere"])


def test_an_heir_stays_the_heir_when_other_hosts_leave() -> None:
    """A death in the same wave as another's does not move the other's heir, unless it was
    that heir: agents that see the deaths in one order or another agree."""
    for dead in HOSTS[:30]:
        named = heir(dead, HOSTS)
        for gone in HOSTS[50:60]:
            if gone not in (named, dead):
                assert heir(dead, [h for h in HOSTS if h != gone]) == named


def test_the_dead_of_one_wave_go_to_many_heirs() -> None:
    """A quarter of the hosts dying at once: their claims are put back by many survivors, not
    a few (each heir reads and requeues all of its dead hosts' claims)."""
    dead, live = HOSTS[:25], HOSTS[25:]
    heirs = Counter(heir(d, live) for d in dead)
    assert len(heirs) >= 15 and max(heirs.values()) <= 4, heirs
