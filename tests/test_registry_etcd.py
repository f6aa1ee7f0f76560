"""What only the etcd backend has: endpoint lists, failover, outages of a real process, auth, etcd's
limits and its URL. The shared behaviour is in test_registry_contract.py."""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from openrange_mesh.errors import Compacted, ConfigError, RegistryError, TlsError, TooLarge, Unavailable
from openrange_mesh.registry import Event, Put, Registry, Watch, open_registry
from openrange_mesh.registry.etcd import EtcdRegistry

from . import helpers
from .etcdkit import EtcdServer, free_port, make_tls, start_cluster, start_etcd
from .helpers import wait_until


def put(registry: Registry, key: bytes, value: bytes) -> int:
    return registry.txn([], [Put(key, value)]).revision


def collect(watch: Watch, count: int, timeout: float = 10.0) -> list[Event]:
    return helpers.collect(watch, count, timeout)


def collect_through(watch: Watch, revision: int, timeout: float = 10.0) -> list[Event]:
    """Events until one at ``revision`` or later."""
    events = collect(watch, 1, timeout)
    while events[-1].kv.mod_revision < revision:
        events += collect(watch, 1, timeout)
    return events


def values(events: list[Event]) -> list[bytes]:
    return [e.kv.value for e in events]


@pytest.fixture
def opened() -> Iterator[list[Registry]]:
    """Registries a test opens; closed afterwards whatever happens."""
    registries: list[Registry] = []
    yield registries
    for registry in registries:
        registry.close()


def open_(opened: list[Registry], url: str, retry_timeout: float) -> Registry:
    registry = open_registry(url, retry_timeout=retry_timeout)
    opened.append(registry)
    return registry


# -- URLs


@pytest.mark.parametrize(
    "url",
    [
        "etcd://",
        "etcd://h1:port",
        "etcd://h1:70000",
        "etcd://h1,,h2",
        "etcd://::1:2379",
        "etcd://[::1:2379",
        "etcd://h1:2379/v3",
        "etcd://h1?colour=blue",
        "etcd://h1?timeout=0",
        "etcd://h1?timeout=soon",
        "etcd://h1?cacert=/ca.pem",
        "etcd+https://h1?cert=/c.pem",
        "etcd://root@h1",
        "etcd://root:s3cret@h1:bad",
        "etcd+ftp://h1",
    ],
)
def test_bad_urls_are_one_line_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as bad:
        EtcdRegistry(url)
    message = str(bad.value)
    assert message and "\n" not in message
    assert "s3cret" not in message


def test_url_forms_and_credentials_stay_out_of_url() -> None:
    url = "etcd+https://root:p%40ss@h1,[::1]:2380,h3:1?cacert=/ca.pem&cert=/c.pem&key=/k.pem&timeout=3"
    registry = EtcdRegistry(url, retry_timeout=8.0)  # lazy: nothing is contacted
    assert registry.url == "etcd+https://h1,[::1]:2380,h3:1?cacert=/ca.pem&cert=/c.pem&key=/k.pem&timeout=3"
    assert registry.endpoints == "h1:2379,[::1]:2380,h3:1"
    assert registry.request_timeout == 3.0
    assert "p%40ss" not in repr(registry) and "p@ss" not in repr(registry)
    assert EtcdRegistry("etcd://h1", retry_timeout=2.0).request_timeout == 1.0
    registry.close()


def test_password_stays_out_of_errors_and_logs(opened: list[Registry], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="openrange_mesh")
    registry = open_(opened, f"etcd://root:s3cret@127.0.0.1:{free_port()}", retry_timeout=0.3)
    with pytest.raises(Unavailable) as down:
        registry.get(b"/k")
    assert "s3cret" not in str(down.value)
    assert caplog.records and "s3cret" not in caplog.text


# -- failover


def test_fails_over_past_a_dead_first_endpoint(etcd: EtcdServer, prefix: bytes, opened: list[Registry]) -> None:
    registry = open_(opened, f"etcd://127.0.0.1:{free_port()},{etcd.endpoint}", retry_timeout=2.0)
    started = time.monotonic()
    revision = put(registry, prefix + b"k", b"v")
    kv, _ = registry.get(prefix + b"k")
    assert kv is not None and kv.mod_revision == revision
    assert time.monotonic() - started < 1.0  # a refused connection moves on at once


def test_no_endpoint_answering_is_unavailable_after_retry_timeout(opened: list[Registry]) -> None:
    registry = open_(opened, f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", retry_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(Unavailable) as down:
        registry.get(b"/k")
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed <= 1.5, elapsed  # kept retrying for the budget, and no longer
    assert "connection refused" in down.value.reason


def test_the_observer_tells_a_refusal_from_a_timeout_and_sees_each_attempt(opened: list[Registry]) -> None:
    seen: list[tuple[str, str | None]] = []
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (the backlog), never answers
    try:
        url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{silent.getsockname()[1]}"
        registry = open_(opened, url, retry_timeout=1.0)
        registry.observer = lambda operation, _seconds, kind: seen.append((operation, kind))
        with pytest.raises(Unavailable):
            registry.get(b"/k")
    finally:
        silent.close()
    assert len(seen) >= 2 and {operation for operation, _ in seen} == {"get"}, seen
    assert {kind for _, kind in seen} == {"unavailable", "timeout"}, seen  # refused by one, silence from the other


def test_cluster_member_killed_mid_use(tmp_path: Path, prefix: bytes, opened: list[Registry]) -> None:
    cluster = start_cluster(tmp_path)
    try:
        registry = open_(opened, cluster.url, retry_timeout=5.0)
        put(registry, prefix + b"a", b"1")
        watch = registry.watch(prefix, registry.get(prefix)[1] + 1)
        put(registry, prefix + b"b", b"2")
        assert values(collect(watch, 1)) == [b"2"]

        # The member the calls and the watch use is made the leader, then killed: failover and election.
        first = cluster.members[0]
        leader = cluster.leader()
        if leader is not first:
            _gateway(leader, "maintenance/transfer-leadership", {"targetID": first.status()["header"]["member_id"]})
        wait_until(lambda: cluster.leader() is first, what="the first member to lead")
        first.kill()
        # A read rides out the failover and the election ...
        assert registry.get(prefix + b"a")[0] is not None
        # ... and then writes and the watch carry on through the survivors.
        put(registry, prefix + b"c", b"3")
        put(registry, prefix + b"d", b"4")
        assert values(collect(watch, 2)) == [b"3", b"4"]
        watch.cancel()
    finally:
        cluster.stop()


def test_a_watch_on_a_hung_member_moves_once_another_call_failed_over(
    tmp_path: Path, prefix: bytes, opened: list[Registry]
) -> None:
    """An agent's keepalive leaves the hung member first: the watch's prober must not take the
    next member's answers for its own member's, or the watch stays on the hung one, delivering
    nothing until its 300 s socket backstop. Nor is the move an outage to the watch's reader."""
    cluster = start_cluster(tmp_path)
    first, second = cluster.members[:2]
    try:
        leader = cluster.leader()
        if leader is first:  # a paused leader would add an election to what is measured
            _gateway(leader, "maintenance/transfer-leadership", {"targetID": second.status()["header"]["member_id"]})
        wait_until(lambda: cluster.leader() is not first, what="another member to lead")
        # The keepalive fails over (0.3 s) well before the quiet watch looks stale (retry_timeout / 2).
        retry_timeout = 2.0
        registry = open_(opened, cluster.url + "?timeout=0.3", retry_timeout=retry_timeout)  # first member's
        watch = registry.watch(prefix, registry.get(prefix)[1] + 1)
        put(registry, prefix + b"a", b"before")
        assert values(collect(watch, 1)) == [b"before"]
        lease = registry.grant(10)
        quiet_until = time.monotonic() + 1.5 * retry_timeout
        while time.monotonic() < quiet_until:  # the keepalive's answers vouch for the quiet watch
            time.sleep(0.2)
            registry.refresh(lease)

        first.pause()
        try:
            registry.refresh(lease)  # times out on the first member, answered by the second
            started = time.monotonic()
            put(open_(opened, f"etcd://{second.endpoint}", retry_timeout=2.0), prefix + b"b", b"after")
            assert values(collect(watch, 1, timeout=8.0)) == [b"after"]
            assert time.monotonic() - started < 2 * retry_timeout
        finally:
            first.resume()
        watch.cancel()
    finally:
        cluster.stop()


# -- outages of the one etcd


def test_paused_etcd_is_unavailable_within_retry_timeout_then_recovers(
    own_etcd: EtcdServer, prefix: bytes, opened: list[Registry]
) -> None:
    registry = open_(opened, own_etcd.url, retry_timeout=2.0)
    put(registry, prefix + b"k", b"1")
    watch = registry.watch(prefix, registry.get(prefix)[1] + 1)
    own_etcd.pause()
    try:
        # A read is retried until the budget is spent; a write that timed out may have been
        # applied, so it is not retried: it fails after one request timeout (retry_timeout / 2).
        for call, least, most in [
            (lambda: registry.get(prefix + b"k"), 1.8, 2.5),
            (lambda: put(registry, prefix + b"k", b"2"), 0.9, 1.5),
        ]:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert least <= time.monotonic() - started <= most
        # The watch notices too (its prober finds the endpoint silent), once.
        started = time.monotonic()
        with pytest.raises(Unavailable):
            while time.monotonic() - started < 10:
                watch.next(0.5)
        assert time.monotonic() - started < 6.0
    finally:
        own_etcd.resume()
    revision = wait_until(lambda: put(registry, prefix + b"k", b"3"), timeout=5.0, what="etcd after SIGCONT")
    # The write that timed out may yet be applied after SIGCONT, even after "3" (hence no retry).
    events = collect_through(watch, revision)
    assert {e.kv.value for e in events} <= {b"2", b"3"}


def test_restart_registry_works_again_and_watch_loses_nothing(
    own_etcd: EtcdServer, prefix: bytes, opened: list[Registry]
) -> None:
    registry = open_(opened, own_etcd.url, retry_timeout=5.0)
    watch = registry.watch(prefix, registry.get(prefix)[1] + 1)
    put(registry, prefix + b"a", b"before")
    assert values(collect(watch, 1)) == [b"before"]

    own_etcd.kill()
    own_etcd.restart()
    put(registry, prefix + b"b", b"after-1")
    put(registry, prefix + b"c", b"after-2")
    assert values(collect(watch, 2)) == [b"after-1", b"after-2"]  # nothing lost, nothing repeated
    assert watch.next(0.3).events == []


def test_threads_write_at_once_and_again_after_a_restart(
    own_etcd: EtcdServer, prefix: bytes, opened: list[Registry]
) -> None:
    # Several threads at once leave several kept-alive connections behind; a restart kills them all,
    # and a write on a dead one would fail as "maybe applied" (never retried). None may.
    registry = open_(opened, own_etcd.url, retry_timeout=5.0)

    def write_all(tag: bytes) -> None:
        def writer(n: int) -> None:
            for i in range(20):
                put(registry, prefix + b"%s-%d-%d" % (tag, n, i), tag)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(writer, range(4)))  # re-raises the first failure

    write_all(b"before")
    # A single member of etcd before 3.5.5 (the wheel's is 3.5.1) answers a write before its WAL
    # holds it (etcd#14370): killed at once, it lost one of the 80 in a CI run. What this test
    # is about is the writes after the restart; the ones before get time to reach the WAL.
    time.sleep(0.5)
    own_etcd.kill()
    own_etcd.restart()
    write_all(b"after")
    kvs = registry.range(prefix).kvs
    assert [kv.value for kv in kvs].count(b"after") == 80
    assert len(kvs) == 160


# -- auth


def _gateway(server: EtcdServer, path: str, body: dict[str, object], token: str = "") -> dict[str, object]:
    request = urllib.request.Request(f"{server.client_url}/v3/{path}", data=json.dumps(body).encode())
    if token:
        request.add_header("Authorization", token)
    with urllib.request.urlopen(request, timeout=5) as response:
        result: dict[str, object] = json.load(response)
        return result


def _enable_auth(server: EtcdServer, password: str) -> str:
    _gateway(server, "auth/user/add", {"name": "root", "password": password})
    _gateway(server, "auth/role/add", {"name": "root"})
    _gateway(server, "auth/user/grant", {"user": "root", "role": "root"})
    _gateway(server, "auth/enable", {})
    return str(_gateway(server, "auth/authenticate", {"name": "root", "password": password})["token"])


def test_user_and_password(own_etcd: EtcdServer, prefix: bytes, opened: list[Registry]) -> None:
    token = _enable_auth(own_etcd, "s3cret")
    host = own_etcd.endpoint

    anonymous = open_(opened, f"etcd://{host}", retry_timeout=1.0)
    with pytest.raises(RegistryError, match="requires authentication"):
        anonymous.get(prefix)
    wrong = open_(opened, f"etcd://root:guess@{host}", retry_timeout=1.0)
    with pytest.raises(RegistryError, match="authentication failed for user 'root'") as refused:
        wrong.get(prefix)
    assert not isinstance(refused.value, Unavailable) and "guess" not in str(refused.value)

    registry = open_(opened, f"etcd://root:s3cret@{host}", retry_timeout=2.0)
    watch = registry.watch(prefix, registry.get(prefix)[1] + 1)
    put(registry, prefix + b"a", b"1")
    assert values(collect(watch, 1)) == [b"1"]

    # Auth switched off and on again under a live registry: its token goes stale both times.
    _gateway(own_etcd, "auth/disable", {}, token)
    put(registry, prefix + b"b", b"2")
    _gateway(own_etcd, "auth/enable", {})
    put(registry, prefix + b"c", b"3")
    assert values(collect(watch, 2)) == [b"2", b"3"]


# -- etcd's limits


def test_oversize_values_are_too_large(etcd: EtcdServer, prefix: bytes, opened: list[Registry]) -> None:
    registry = open_(opened, etcd.url, retry_timeout=2.0)
    with pytest.raises(TooLarge) as big:
        put(registry, prefix + b"big", b"x" * (1600 * 1024))  # over --max-request-bytes (1.5 MiB)
    assert big.value.size >= 1600 * 1024
    with pytest.raises(TooLarge) as huge:
        put(registry, prefix + b"huge", b"x" * (3 * 1024 * 1024))  # over gRPC's own limit
    assert huge.value.size > huge.value.limit > 0
    assert registry.get(prefix + b"big")[0] is None


def test_too_many_ops_in_one_txn_is_a_registry_error(etcd: EtcdServer, prefix: bytes, opened: list[Registry]) -> None:
    registry = open_(opened, etcd.url, retry_timeout=2.0)
    with pytest.raises(RegistryError, match="too many operations"):
        registry.txn([], [Put(prefix + b"%d" % i, b"") for i in range(200)])


def test_compacted_range_names_the_compaction_revision(etcd: EtcdServer, prefix: bytes, opened: list[Registry]) -> None:
    registry = open_(opened, etcd.url, retry_timeout=2.0)
    first = put(registry, prefix + b"k", b"1")
    kept = put(registry, prefix + b"k", b"2")
    etcd.compact(kept)
    with pytest.raises(Compacted) as gone:
        registry.range(prefix, revision=first)
    assert (gone.value.revision, gone.value.compact_revision) == (first, kept)


# -- threads


def test_an_uncancelled_watch_does_not_block_interpreter_exit(etcd: EtcdServer) -> None:
    script = textwrap.dedent(
        f"""
        from openrange_mesh.registry import open_registry
        registry = open_registry({etcd.url!r}, retry_timeout=2.0)
        watch = registry.watch(b"/exit-test/", registry.get(b"/exit-test/")[1] + 1)
        watch.next(0.2)
        print("watching", flush=True)
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert "watching" in done.stdout
    assert time.monotonic() - started < 5.0


# -- TLS


def test_tls_with_client_certificates(tmp_path: Path, prefix: bytes, opened: list[Registry]) -> None:
    tls = make_tls(tmp_path / "tls")
    server = start_etcd(tmp_path / "etcd", tls=tls)
    try:
        registry = open_(opened, server.url, retry_timeout=2.0)  # REQUESTS_CA_BUNDLE must not win
        watch = registry.watch(prefix, registry.get(prefix)[1] + 1)
        put(registry, prefix + b"a", b"1")
        assert values(collect(watch, 1)) == [b"1"]

        untrusted = open_(opened, f"etcd+https://{server.endpoint}", retry_timeout=2.0)
        started = time.monotonic()
        with pytest.raises(TlsError, match="TLS handshake with") as refused:
            untrusted.get(prefix)
        assert not isinstance(refused.value, Unavailable)  # a certificate problem is not retried
        assert time.monotonic() - started < 1.0
    finally:
        server.stop()


# -- proof of life shared between processes


def _answered_in_child(answers: object, url: str, out: object) -> None:
    """A spawned process's registry on the shared table: what it sees, then one request of its own."""
    registry = open_registry(url, answers=answers)
    seen = registry.answered_at(0)  # type: ignore[attr-defined]
    registry.get(b"/shared/k")
    out.put(seen)  # type: ignore[attr-defined]
    registry.close()


def test_a_quiet_watch_sharing_anothers_answers_sends_etcd_nothing(
    etcd: EtcdServer, prefix: bytes, opened: list[Registry]
) -> None:
    """The dashboard child's registry shares its agent's table of etcd's answers: while the
    agent's keepalives are answered, the child's quiet watch does not probe; a registry of its
    own would (a Range every 0.25 s here). In another process the table is the same memory,
    both ways."""
    agent = open_(opened, etcd.url, retry_timeout=0.5)  # a quiet watch probes every 0.25 s
    table = agent.share_answers()
    lease = agent.grant(5)

    def ranges_while_quiet(registry: Registry) -> float:
        watch = registry.watch(prefix, agent.get(prefix)[1] + 1)  # from now: revision 1 may be compacted
        try:
            time.sleep(0.3)  # the stream open
            before = etcd.requests_served("Range")
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                agent.refresh(lease)  # the agent's keepalive (LeaseKeepAlive, not a Range)
                time.sleep(0.1)
            return etcd.requests_served("Range") - before
        finally:
            watch.cancel()

    child = open_registry(etcd.url, retry_timeout=0.5, answers=table)
    opened.append(child)
    assert ranges_while_quiet(child) == 0
    assert ranges_while_quiet(open_(opened, etcd.url, retry_timeout=0.5)) >= 3  # alone: it probes

    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    before = time.monotonic()
    agent.get(prefix + b"k")
    process = context.Process(target=_answered_in_child, args=(table, etcd.url, out))
    process.start()
    seen = out.get(timeout=30)
    process.join(30)
    assert seen >= before  # the agent's answer, seen by the child
    assert agent.answered_at(0) > seen  # type: ignore[attr-defined]  # the child's, seen by the agent
    agent.revoke(lease)
