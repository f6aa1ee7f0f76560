#!/usr/bin/env python3
"""The fault suite: each fault against a fresh local etcd and three real agents (ttl 2, two
workers each, ~30 command episodes of 0.2-0.5 s), and what the mesh did about it.

Per fault: episodes submitted, succeeded, lost (not succeeded in the end), committed twice (an
episode with more than one attempt closed by a final commit, not as "retried" or "released"), executed twice
(the command ran to completion twice: allowed for a stale owner's work, never committed twice);
detection, seconds from the fault until the mesh noticed (what that means is said per fault:
the host key deleted, the episodes requeued, a new leader), and recovery, seconds from the fault
until every episode finished.

    python scripts/faults.py --json faults.json
    python scripts/faults.py --only kill-9,stale-commit

Each scenario is one function in ``SCENARIOS``; a new one takes a ``Run`` and returns an
``Outcome``. The network partition needs root and iproute2 (skipped otherwise, with the reason).
The harness is the tests' own (tests/meshkit.py, tests/etcdkit.py, tests/netkit.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import EtcdServer, start_etcd
from tests.meshkit import LossyProxy, Mesh, commit_outcomes, commit_under, committed_in, tracebacks
from tests.netkit import Netns, why_unavailable
from tests.s3kit import AWS_TEST_ENV, start_s3

from openrange_mesh.model import State
from openrange_mesh.registry import Put

TTL = 2
DURATIONS = [0.2 + 0.1 * (i % 4) for i in range(30)]  # seconds per command episode
OUTAGE = 2 * TTL  # how long a stopped agent stays stopped
CUT = 4 * TTL  # how long a partition lasts
ETCD_DOWN = TTL + 1.0  # how long etcd stays dead
LIMIT = 60.0  # seconds any one wait may take before the scenario gives up on it
PUT_BACK = ("retried", "released")  # how an attempt that did not end its episode is closed


@dataclass
class Outcome:
    fault: str
    submitted: int = 0
    succeeded: int = 0
    lost: int = 0
    committed_twice: int = 0
    executed_twice: int = 0
    detection_s: float | None = None
    detected: str = ""  # what detection measured
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None


@dataclass
class Run:
    """What every scenario gets: a work directory and the episode count."""

    work: Path
    episodes: int = len(DURATIONS)

    def durations(self) -> list[float]:
        return [0.2 + 0.1 * (i % 4) for i in range(self.episodes)]

    @contextlib.contextmanager
    def mesh(self, name: str, listen: tuple[str, ...] = ()) -> Iterator[tuple[EtcdServer, Mesh]]:
        """A fresh etcd (also serving on ``listen``) and a mesh on it, torn down after."""
        root = self.work / name
        server = start_etcd(root / "etcd", listen=listen)
        mesh = Mesh(server.url, root / "mesh", ttl=TTL)
        try:
            yield server, mesh
        finally:
            try:
                mesh.close()
            finally:
                server.stop()


# --- measuring -------------------------------------------------------------------------------


def seconds_until(predicate: Callable[[], object], since: float, limit: float = LIMIT) -> float | None:
    """Seconds from ``since`` (monotonic) until ``predicate()`` holds; None if not within ``limit``."""
    deadline = since + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # an outage, a key not there yet
            if predicate():
                return time.monotonic() - since
        time.sleep(0.02)
    return None


class Clock:
    """Times ``predicate`` from ``since`` in a thread of its own, so that the scenario can go on
    (continue a stopped agent, heal a partition) while the mesh recovers."""

    def __init__(self, predicate: Callable[[], object], since: float, limit: float = LIMIT) -> None:
        self.since = since
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, args=(predicate, limit), daemon=True)
        self._thread.start()

    def _run(self, predicate: Callable[[], object], limit: float) -> None:
        self.seconds = seconds_until(predicate, self.since, limit)

    def result(self) -> float | None:
        self._thread.join()
        return self.seconds


def held_by(mesh: Mesh, host: str, ids: list[str]) -> list[str]:
    return [i for i, r in mesh.records(ids).items() if r.state is State.RUNNING and r.owner == host]


def wait_running(mesh: Mesh, host: str) -> None:
    if seconds_until(lambda: mesh.running_on(host), time.monotonic(), 20) is None:
        raise RuntimeError(f"{host} never ran an episode")


def fault_on_h2(outcome: Outcome, mesh: Mesh, ids: list[str], fault: Callable[[], None]) -> tuple[float, Clock]:
    """``fault()`` once h2 runs episodes; detection: what it held requeued (and a note of when
    its host key went). Returns when the fault was made, and the recovery's clock."""
    wait_running(mesh, "h2")
    fault()
    fault_at = time.monotonic()
    recovery = Clock(finished(mesh, ids), fault_at)
    gone = Clock(lambda: mesh.host_kv("h2") is None, fault_at, 15)
    held = held_by(mesh, "h2", ids)
    outcome.detection_s = seconds_until(requeued(mesh, "h2", held), fault_at)
    outcome.notes.append(f"{len(held)} held; host key gone after {_s(gone.result())}")
    return fault_at, recovery


def requeued(mesh: Mesh, host: str, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(r.owner != host or r.state is not State.RUNNING for r in mesh.records(ids).values())


def finished(mesh: Mesh, ids: list[str]) -> Callable[[], bool]:
    def done() -> bool:
        records = mesh.records(ids)
        return len(records) == len(ids) and all(r.state.is_terminal for r in records.values())

    return done


def rejoined(mesh: Mesh, host: str, old_lease: int) -> Callable[[], bool]:
    return lambda: (kv := mesh.host_kv(host)) is not None and kv.lease != old_lease


def tally(outcome: Outcome, mesh: Mesh, ids: list[str], recovery: Clock) -> Outcome:
    """Recovery (until every episode finished), and the counts."""
    outcome.recovery_s = recovery.result()
    records = mesh.records(ids)
    runs = mesh.executions()
    outcome.submitted = len(ids)
    outcome.succeeded = sum(r.state is State.SUCCEEDED for r in records.values())
    outcome.lost = len(ids) - outcome.succeeded
    outcome.committed_twice = sum(sum(a.outcome not in PUT_BACK for a in r.history) > 1 for r in records.values())
    outcome.executed_twice = sum(len(runs.get(mesh.seeds[i], [])) > 1 for i in ids)
    return outcome


def start_three(mesh: Mesh, **victim: Any) -> None:
    """h1, h2 and h3, h2 started with ``victim``'s options; wait until all joined."""
    agents = [mesh.start_agent(h, wait=False, **(victim if h == "h2" else {})) for h in ("h1", "h2", "h3")]
    for agent in agents:
        mesh.wait_joined(agent)


# --- the scenarios ---------------------------------------------------------------------------


def kill_9(run: Run) -> Outcome:
    """h2 killed with SIGKILL while it runs episodes; detection: its episodes requeued."""
    outcome = Outcome("kill -9 of an agent", detected="its episodes requeued")
    with run.mesh("kill-9") as (_, mesh):
        start_three(mesh)
        ids = mesh.submit_commands(run.episodes, run.durations())
        _, recovery = fault_on_h2(outcome, mesh, ids, mesh.agents["h2"].kill)
        return tally(outcome, mesh, ids, recovery)


def sigstop(run: Run) -> Outcome:
    """h2 (the agent, not its workers) stopped for 2 x ttl, then continued; detection: its
    episodes requeued."""
    outcome = Outcome(f"SIGSTOP {OUTAGE:g} s, then SIGCONT", detected="its episodes requeued")
    with run.mesh("sigstop") as (_, mesh):
        start_three(mesh)
        ids = mesh.submit_commands(run.episodes, run.durations())
        old = mesh.host_kv("h2")
        victim = mesh.agents["h2"]
        fault_at, recovery = fault_on_h2(outcome, mesh, ids, victim.pause)
        time.sleep(max(0.0, fault_at + OUTAGE - time.monotonic()))
        victim.resume()
        back = seconds_until(rejoined(mesh, "h2", old.lease if old else 0), time.monotonic(), 15)
        outcome.notes.append(f"rejoined {_s(back)} after SIGCONT")
        return tally(outcome, mesh, ids, recovery)


def partition(run: Run) -> Outcome:
    """h2 runs in a network namespace whose veth is taken down for 4 x ttl; detection: its
    episodes requeued. Notes the tracebacks h2 logged during the cut."""
    outcome = Outcome(f"network partition {CUT:g} s (netns)", detected="its episodes requeued")
    why = why_unavailable()
    if why is not None:
        outcome.skipped = why
        return outcome
    netns = Netns().create()
    try:
        with run.mesh("partition", listen=(netns.host_ip,)) as (server, mesh):
            inner = f"etcd://{netns.host_ip}:{server.client_port}"
            start_three(mesh, registry=inner, wrapper=netns.argv_prefix)
            ids = mesh.submit_commands(run.episodes, run.durations())
            old = mesh.host_kv("h2")
            victim = mesh.agents["h2"]
            log_at = victim.log_size()
            fault_at, recovery = fault_on_h2(outcome, mesh, ids, netns.cut)
            time.sleep(max(0.0, fault_at + CUT - time.monotonic()))
            during = tracebacks(victim.log_since(log_at))
            netns.heal()
            back = seconds_until(rejoined(mesh, "h2", old.lease if old else 0), time.monotonic(), 15)
            printed = sum(len(chain) for _, chain in during)
            outcome.notes.append(f"rejoined {_s(back)} after the heal")
            outcome.notes.append(f"h2 logged {len(during)} tracebacks ({printed} with chained ones) in the cut")
            return tally(outcome, mesh, ids, recovery)
    finally:
        netns.remove()


def etcd_restart(run: Run) -> Outcome:
    """etcd killed (SIGKILL) for ttl + 1 s, then restarted on the same data; detection: commits
    resume (the first episode that succeeds after the restart)."""
    outcome = Outcome(f"etcd killed {ETCD_DOWN:g} s, restarted", detected="commits resume")
    with run.mesh("etcd-restart") as (server, mesh):
        start_three(mesh)
        leases = {h: kv.lease for h in mesh.agents if (kv := mesh.host_kv(h)) is not None}
        ids = mesh.submit_commands(run.episodes, run.durations())
        done = 0

        def succeeded() -> int:
            return sum(r.state is State.SUCCEEDED for r in mesh.records(ids).values())

        if seconds_until(lambda: succeeded() >= 5, time.monotonic(), 20) is not None:
            done = succeeded()
        server.kill()
        fault_at = time.monotonic()
        recovery = Clock(finished(mesh, ids), fault_at)
        time.sleep(ETCD_DOWN)
        server.restart()
        outcome.detection_s = seconds_until(lambda: succeeded() > done, fault_at)
        tally(outcome, mesh, ids, recovery)
        kept = sum(1 for h, lease in leases.items() if (kv := mesh.host_kv(h)) is not None and kv.lease == lease)
        outcome.notes.append(f"{kept} of {len(leases)} agents kept their lease")
        return outcome


def leader_killed(run: Run) -> Outcome:
    """The leader killed with SIGKILL; detection: another agent holds the leader key."""
    outcome = Outcome("the leader killed (kill -9)", detected="a new leader")
    with run.mesh("leader") as (_, mesh):
        start_three(mesh)
        ids = mesh.submit_commands(run.episodes, run.durations())
        seat = None
        if seconds_until(lambda: mesh.leader(), time.monotonic(), 10) is not None:
            seat = mesh.leader()
        if seat is None:
            outcome.error = "no leader was elected"
            return tally(outcome, mesh, ids, Clock(finished(mesh, ids), time.monotonic()))
        mesh.agents[seat[0]].kill()
        fault_at = time.monotonic()
        recovery = Clock(finished(mesh, ids), fault_at)
        outcome.detection_s = seconds_until(lambda: (s := mesh.leader()) is not None and s[0] != seat[0], fault_at)
        outcome.notes.append(f"{seat[0]} was the leader")
        return tally(outcome, mesh, ids, recovery)


def stale_commit(run: Run) -> Outcome:
    """h2's first commit held in flight by a proxy, and nothing of h2's forwarded after it, until
    its lease expired and the episodes were committed by a peer; then the held commit is sent to
    etcd. Detection: h2's episodes requeued; the note says what etcd answered the stale commit."""
    outcome = Outcome("stale commit held past the lease", detected="its episodes requeued")
    with run.mesh("stale-commit") as (server, mesh):
        proxy = LossyProxy(server.host, server.client_port)
        try:
            claims, episodes = mesh.keys.host_claims("h2"), mesh.keys.episodes()
            proxy.hold_once(commit_under(claims, episodes))
            start_three(mesh, registry=proxy.endpoint)
            ids = mesh.submit_commands(run.episodes, run.durations())
            if seconds_until(lambda: proxy.held, time.monotonic(), 20) is None or proxy.held is None:
                outcome.error = "h2 sent no commit to hold"
                return tally(outcome, mesh, ids, Clock(finished(mesh, ids), time.monotonic()))
            held = proxy.held
            stale = [mesh.keys.name_of(k.encode(), episodes) for k in committed_in(held.body, claims, episodes)]
            recovery = Clock(finished(mesh, ids), held.held_at)
            outcome.detection_s = seconds_until(requeued(mesh, "h2", stale), held.held_at)
            tally(outcome, mesh, ids, recovery)
            proxy.release()
            applied = [ok for _, ok in commit_outcomes(held.body, held.answer, claims, episodes)]
            if held.status != 200:
                verdict = f"etcd refused the request: HTTP {held.status} {held.answer}"
            else:
                verdict = "APPLIED" if any(applied) else "refused by its compare (succeeded: false)"
            outcome.notes.append(f"the stale commit of {len(stale)} episodes: {verdict}")
            return outcome
        finally:
            proxy.close()


def broken_store(run: Run) -> Outcome:
    """h3 started with a store it cannot use (an S3 bucket that does not exist, on moto's
    server); h1 and h2 are fine. Detection: h3 exits (it should, with status 1, at start)."""
    outcome = Outcome("one agent with a broken store", detected="the agent exits")
    s3 = start_s3()
    saved = {name: os.environ.get(name) for name in AWS_TEST_ENV}
    for name, value in AWS_TEST_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        with run.mesh("broken-store") as (_, mesh):
            for host in ("h1", "h2"):
                mesh.start_agent(host)
            broken = mesh.start_agent("h3", wait=False, store=f"s3://missing-bucket/x?endpoint_url={s3.endpoint_url}")
            started_at = time.monotonic()
            outcome.detection_s = seconds_until(lambda: not broken.is_running(), started_at, 15)
            ids = mesh.submit_commands(run.episodes, run.durations())
            tally(outcome, mesh, ids, Clock(finished(mesh, ids), time.monotonic()))  # from the submission
            if broken.is_running():
                ran = sum(1 for r in mesh.records(ids).values() if r.history and r.history[-1].host == "h3")
                outcome.notes.append(f"h3 still running (it joined: {mesh.host_kv('h3') is not None}); ran {ran}")
            else:
                outcome.notes.append(f"h3 exited with status {broken.proc.returncode if broken.proc else '?'}")
            return outcome
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        s3.stop()


def garbage_leader(run: Run) -> Outcome:
    """A value no agent can read, bound to no lease, put at the leader key over the leader's;
    detection: a leader elected again (a readable leader key bound to a lease)."""
    outcome = Outcome("garbage at ctl/leader", detected="a leader again")
    with run.mesh("garbage-leader") as (_, mesh):
        start_three(mesh)
        seconds_until(lambda: mesh.leader(), time.monotonic(), 10)
        ids = mesh.submit_commands(run.episodes, run.durations())
        mesh.registry.txn([], [Put(mesh.keys.leader(), b"\xc1 not msgpack")])
        fault_at = time.monotonic()
        recovery = Clock(finished(mesh, ids), fault_at)

        def elected() -> bool:
            kv = mesh.registry.get(mesh.keys.leader())[0]
            return kv is not None and kv.lease != 0 and mesh.leader() is not None

        outcome.detection_s = seconds_until(elected, fault_at, 15)
        if outcome.detection_s is None:
            outcome.notes.append("no leader within 15 s")
        return tally(outcome, mesh, ids, recovery)


SCENARIOS: dict[str, Callable[[Run], Outcome]] = {
    "kill-9": kill_9,
    "sigstop": sigstop,
    "partition": partition,
    "etcd-restart": etcd_restart,
    "leader": leader_killed,
    "stale-commit": stale_commit,
    "broken-store": broken_store,
    "garbage-leader": garbage_leader,
}


# --- running and reporting -------------------------------------------------------------------


def run_one(name: str, run: Run) -> Outcome:
    try:
        return SCENARIOS[name](run)
    except pytest.skip.Exception as exc:  # etcdkit: this etcd cannot be controlled
        return Outcome(name, skipped=str(exc))
    except Exception as exc:
        return Outcome(name, error=f"{type(exc).__name__}: {exc}"[:500])


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def table(outcomes: list[Outcome]) -> Table:
    grid = Table(title=f"Faults (ttl {TTL} s, 3 agents x 2 workers, command episodes of 0.2-0.5 s)")
    columns = ("fault", "subm.", "succ.", "lost", "commit 2x", "exec 2x", "detected", "when", "recovered", "notes")
    for column in columns:
        numeric = column not in ("fault", "when", "notes")
        grid.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for o in outcomes:
        if o.skipped or o.error:
            grid.add_row(o.fault, *[""] * 8, f"SKIPPED: {o.skipped}" if o.skipped else f"ERROR: {o.error}")
            continue
        counts = [o.submitted, o.succeeded, o.lost, o.committed_twice, o.executed_twice]
        grid.add_row(o.fault, *map(str, counts), _s(o.detection_s), o.detected, _s(o.recovery_s), "; ".join(o.notes))
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the figures here too")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--episodes", type=int, default=len(DURATIONS))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (agents' and etcd's logs)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    outcomes = []
    started = time.time()
    try:
        for name in names:
            console.print(f"[bold]{name}[/bold] ...")
            began = time.monotonic()
            outcomes.append(run_one(name, Run(work, args.episodes)))
            console.print(f"  done in {time.monotonic() - began:.1f} s")
    finally:
        if args.keep:
            console.print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    Console(width=None if sys.stdout.isatty() else 180).print(table(outcomes))
    if args.json:
        report = {
            "ttl_s": TTL,
            "agents": 3,
            "capacity": 2,
            "episodes": args.episodes,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "faults": {name: asdict(o) for name, o in zip(names, outcomes, strict=True)},
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(o.error or o.committed_twice for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
