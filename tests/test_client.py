"""MeshClient on both registry backends. Episodes are finished by the real ledger standing in for
an agent (claim + fenced commit), so these tests need no agent processes."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from openrange_mesh.client.client import MeshClient
from openrange_mesh.errors import CorruptRecord, EpisodeNotFound, SpecError
from openrange_mesh.ids import home_id
from openrange_mesh.ledger.records import finish_attempt
from openrange_mesh.model import HostInfo, State
from openrange_mesh.registry import Put, Registry

from .helpers import wait_until

SLEEP = {"runtime": "sleep", "params": {"seconds": 0}}


@pytest.fixture
def namespace() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(registry: Registry, namespace: str) -> Iterator[MeshClient]:
    with MeshClient(registry, namespace=namespace, consumer="trainer") as c:
        yield c


def finish(client: MeshClient, registry: Registry, state: State = State.SUCCEEDED, count: int = 0) -> list[str]:
    """Act as an agent: claim queue entries and commit them with ``state``."""
    lease = registry.grant(10)
    done: list[str] = []
    for entry in client.ledger.queue()[: count or None]:
        won = client.ledger.claim("stand-in", lease, entry, client.ledger.read(list(entry.ids)))
        assert won is not None
        claim, running = won
        finals = [finish_attempt(r, state, time.time(), None, {"id": r.id}) for r in running]
        assert client.ledger.commit(claim, finals, last=True)
        done += claim.episode_ids
    return done


def test_submit_checks_everything_first(client: MeshClient) -> None:
    with pytest.raises(SpecError, match=r"params\.seconds"):
        client.submit([SLEEP, {"runtime": "sleep", "params": {"seconds": -1}}])
    assert list(client.list()) == []
    ids = client.submit([SLEEP] * 3)
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert [r.state for r in client.list()] == [State.PENDING] * 3


@pytest.mark.parametrize("hosts", [12, 40])
def test_a_submission_deals_whole_runs_in_each_txn_and_marks_its_last_if_a_host_got_none(
    client: MeshClient, registry: Registry, hosts: int
) -> None:
    """Issue 15: a host's run of its capacity comes in one txn (one claim fills its workers).
    The queued marker, a sign for every agent, is written only when a host got no share (100
    entries in runs of 4 reach 12 hosts, not 40), and then with the last txn: idle hosts steal
    once every share is in, not from the hosts the first txn reached."""
    keys = client.keys
    for i in range(hosts):
        registry.txn([], [Put(keys.host(f"p{i:02d}"), HostInfo(id=f"p{i:02d}", capacity=4).to_bytes())])
    client.submit([SLEEP] * 100)
    entries = registry.range(keys.queue()).kvs
    txns = sorted({kv.mod_revision for kv in entries})
    assert len(entries) == 100 and len(txns) == 2  # 64 entries, then 36
    marked = [kv.mod_revision for kv in registry.range(keys.queued_marker()).kvs]
    assert marked == ([] if hosts == 12 else txns[-1:])
    runs = Counter((keys.name_of(kv.key, keys.queue()).split("/")[0], kv.mod_revision) for kv in entries)
    assert set(runs.values()) <= {4, 8}, runs  # a host's runs, whole in the txn that has them


def test_idempotency_key_returns_the_existing_episode(client: MeshClient) -> None:
    (first,) = client.submit({**SLEEP, "idempotency_key": "run-7/seed-1"})
    (again,) = client.submit({**SLEEP, "idempotency_key": "run-7/seed-1"})
    assert again == first and len(list(client.list())) == 1


def test_a_batch_under_idempotency_keys_is_as_wide_as_one_txn_holds(client: MeshClient) -> None:
    """126 keyed episodes in one batch fit one txn (their group, its entry and 126 keys); 127
    would not, and are refused before anything is written, with the reason."""
    specs = [{**SLEEP, "idempotency_key": f"k{i}"} for i in range(127)]
    with pytest.raises(SpecError, match="at most 126 with an idempotency_key"):
        client.submit(specs, batch=127)
    assert list(client.list()) == []
    ids = client.submit(specs[:126], batch=126)
    assert len(set(ids)) == 126 and client.submit(specs[:126], batch=126) == ids
    assert len({home_id(i) for i in ids}) == 1  # one group


@pytest.mark.parametrize("batch", [None, 3])
def test_one_key_twice_in_one_submission_is_one_episode(client: MeshClient, batch: int | None) -> None:
    """etcd refuses a txn that puts one key twice; so does the memory registry."""
    (old,) = client.submit({**SLEEP, "idempotency_key": "earlier"})
    specs = [{**SLEEP, "idempotency_key": k} for k in ("a", "b", "a", "earlier", "b", "a")]
    ids = client.submit([*specs, SLEEP], batch=batch)
    a, b = ids[0], ids[1]
    assert ids == [a, b, a, old, b, a, ids[6]] and len({a, b, old, ids[6]}) == 4
    assert sorted(r.id for r in client.list()) == sorted([old, a, b, ids[6]])
    assert client.submit([{**SLEEP, "idempotency_key": "b"}] * 2, batch=batch) == [b, b]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"result": {"a": {1: "x"}}}, "params.result.a"),  # was written, then every reader skipped it
        ({"result": {"a": {1, 2}}}, "params.result.a"),
        ({"result": {"a": b"bytes"}}, "params.result.a"),
    ],
)
def test_params_that_would_not_come_back_submit_nothing(client: MeshClient, bad: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        client.submit([SLEEP, {"runtime": "sleep", "params": bad}])
    assert caught.value.field == field
    assert list(client.list()) == []


def test_submit_of_what_is_not_a_spec_is_a_spec_error(client: MeshClient) -> None:
    for bad in (5, None, "sleep"):
        with pytest.raises(SpecError, match="expected an EpisodeSpec"):
            client.submit(bad)  # type: ignore[arg-type]


def test_get_of_a_record_that_does_not_decode_says_corrupt(client: MeshClient, registry: Registry) -> None:
    (single,), members, (fine,) = client.submit(SLEEP), client.submit([SLEEP] * 2, batch=2), client.submit(SLEEP)
    for key in (client.keys.episode(single), client.keys.episode(home_id(members[0]) or "")):
        registry.txn([], [Put(key, b"\xc1 garbage")])
    for episode_id in (single, *members):
        with pytest.raises(CorruptRecord, match="not msgpack"):
            client.get(episode_id)
    assert client.get(fine).state is State.PENDING
    with pytest.raises(EpisodeNotFound):
        client.get("0000000000-0000-nope")


def test_as_completed_streams_results_as_they_finish(client: MeshClient, registry: Registry) -> None:
    ids = client.submit([SLEEP] * 4, batch=2)
    threading.Timer(0.3, finish, (client, registry)).start()
    got = [r.id for r in client.as_completed(ids, timeout=10)]
    assert sorted(got) == sorted(ids)
    assert all(r.state is State.SUCCEEDED for r in client.wait(ids, timeout=5))


def test_wait_gets_what_finished_before_it_was_called(client: MeshClient, registry: Registry, namespace: str) -> None:
    """Episodes this client just submitted are watched from their submission (not read
    first); others are read. Both kinds, finished before the wait, come back."""
    with MeshClient(registry, namespace=namespace, consumer="other") as other:
        theirs = other.submit([SLEEP] * 2)
    ours = client.submit([SLEEP] * 3)
    finish(client, registry)
    records = client.wait([*ours, *theirs], timeout=5)
    assert [r.id for r in records] == [*ours, *theirs]
    assert {r.state for r in records} == {State.SUCCEEDED}


def test_as_completed_reads_again_what_finished_while_its_watch_was_compacted_away(
    client: MeshClient, registry: Registry, namespace: str, compact: Callable[[int], None]
) -> None:
    with MeshClient(registry, namespace=namespace, consumer="other") as other:  # ids this client must read
        first, second = other.submit([SLEEP] * 2)
    finish(client, registry, count=1)
    stream = client.as_completed([first, second], timeout=5)
    assert next(stream).id == first  # from its first read: its watch is not open yet
    finish(client, registry)
    compact(registry.get(b"/")[1])  # the second's events are gone before the watch opens
    assert [r.id for r in stream] == [second]


def test_as_completed_rejects_unknown_ids(client: MeshClient) -> None:
    with pytest.raises(EpisodeNotFound):
        list(client.as_completed(["0000000001-0000-nope"], timeout=1))


def test_backpressure_blocks_until_episodes_finish(registry: Registry, namespace: str) -> None:
    with MeshClient(registry, namespace=namespace, consumer="t", max_in_flight=2) as client:
        client.submit([SLEEP] * 2)
        submitted = threading.Event()
        threading.Thread(target=lambda: (client.submit(SLEEP), submitted.set()), daemon=True).start()
        assert not submitted.wait(0.5)  # two in flight: the third waits
        finish(client, registry, count=1)
        assert submitted.wait(5)


def test_backpressure_frees_the_room_of_episodes_collected_while_nobody_waited(
    registry: Registry, namespace: str, compact: Callable[[int], None]
) -> None:
    """Episodes finished, acked and collected (retention) while this client never waited for
    them, their history compacted: the next submit that needs room goes on. It had raised
    EpisodeNotFound, and so had every submit after it."""
    with MeshClient(registry, namespace=namespace, consumer="t", max_in_flight=2) as client:
        ids = client.submit([SLEEP] * 2)
        assert client.cancel(ids) == dict.fromkeys(ids, "cancelled")
        assert client.ack(ids) == 2 and client.collect(0) == 2
        compact(registry.get(b"/")[1])
        (third,) = client.submit(SLEEP)
        assert third not in ids and [r.id for r in client.list()] == [third]


def test_restarted_consumer_gets_unacked_results_only(registry: Registry, namespace: str) -> None:
    with MeshClient(registry, namespace=namespace, consumer="ppo") as first:
        ids = first.submit([SLEEP] * 3)
        finish(first, registry)
        first.ack(ids[:1])
    with MeshClient(registry, namespace=namespace, consumer="ppo") as restarted:
        delivered = [r.id for r in restarted.as_completed(timeout=1)]
        assert sorted(delivered) == sorted(ids[1:])
        assert restarted.ack(delivered) == 2 and restarted.ack(delivered) == 0
    with MeshClient(registry, namespace=namespace, consumer="ppo") as again:
        assert list(again.as_completed(timeout=0.5)) == []
    with MeshClient(registry, namespace=namespace, consumer="someone-else") as other:
        assert list(other.as_completed(timeout=0.5)) == []


def test_cancel_pending_and_running(client: MeshClient, registry: Registry) -> None:
    ids = client.submit([SLEEP] * 2)
    assert client.cancel([ids[0]]) == {ids[0]: "cancelled"}
    lease = registry.grant(10)
    entry = next(e for e in client.ledger.queue() if e.ids == (ids[1],))
    assert client.ledger.claim("h", lease, entry, client.ledger.read([ids[1]])) is not None
    assert client.cancel([ids[1]]) == {ids[1]: "requested"}
    assert registry.get(client.keys.cancel(ids[1]))[0] is not None  # the owner's watch sees this
    assert client.cancel([ids[0]]) == {ids[0]: "cancelled"}  # already: reports the state
    with pytest.raises(EpisodeNotFound):
        client.cancel(["0000000001-0000-nope"])


def test_collect_deletes_only_acked_records_past_retention(client: MeshClient, registry: Registry) -> None:
    ids = client.submit([{**SLEEP, "idempotency_key": f"k{i}"} for i in range(3)])
    finish(client, registry)
    client.ack(ids[:2])
    assert client.collect(retention=3600) == 0
    wait_until(lambda: client.collect(retention=0) == 2, timeout=5)
    assert [r.id for r in client.list()] == [ids[2]]
    assert registry.get(client.keys.idempotency("k0"))[0] is None  # the key can be used again
