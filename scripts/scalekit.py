"""What bench_scale.py measures with, and how: a fleet of real agent processes, etcd's own
counters, ``/proc``, the agents' ``/metrics``, and the figures drawn from committed records.

* ``EtcdSample``: etcd's counters at one moment: requests by gRPC method
  (``grpc_server_started_total``: every JSON gateway request is one gRPC call, a watch one per
  stream opened), watch events sent (``etcd_debugging_mvcc_events_total``: one per event per
  watcher that receives it; events a watcher's filter drops are not counted), bytes sent to
  clients (``etcd_network_client_grpc_sent_bytes_total``: answers and watch messages, as gRPC
  hands them to the gateway) and etcd's CPU seconds (``/proc``).
* ``Fleet``: N hosts running a given tree's code: ``openrange-agent`` processes, or simulated
  hosts by the hundred in a few scripts/scalesim.py processes; each host serves its
  ``/metrics``, and ``LeaseFigures`` is what one scrape says of its lease.
* ``claim_latencies``, ``check_exactly_once``: figures and invariants from the records.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cpukit import cpu_seconds
from openrange_mesh.keys import Keys
from openrange_mesh.model import EpisodeRecord, State, decode_records, is_live
from openrange_mesh.registry import Registry

_STARTED = re.compile(r'^grpc_server_started_total\{grpc_method="(?P<method>\w+)",[^}]*\} (?P<n>\S+)$', re.M)
_EVENTS = re.compile(r"^etcd_debugging_mvcc_events_total (\S+)$", re.M)
_SENT = re.compile(r"^etcd_network_client_grpc_sent_bytes_total (\S+)$", re.M)
AGENT_MAIN = "from openrange_mesh.cli.agent import main; main()"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class EtcdSample:
    at: float  # monotonic
    requests: dict[str, float]  # by gRPC method
    events: float
    sent_bytes: float
    cpu: float

    @classmethod
    def take(cls, endpoint: str, pid: int) -> EtcdSample:
        with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
            text = response.read().decode()
        requests: dict[str, float] = {}
        for m in _STARTED.finditer(text):
            requests[m["method"]] = requests.get(m["method"], 0.0) + float(m["n"])
        events, sent = _EVENTS.search(text), _SENT.search(text)
        assert events and sent, "etcd's /metrics lacks its watch event or sent-bytes counter"
        return cls(time.monotonic(), requests, float(events[1]), float(sent[1]), cpu_seconds(pid))

    def since(self, before: EtcdSample, per: float) -> dict[str, float]:
        """What etcd did from ``before`` to this sample, divided by ``per`` (seconds, episodes)."""
        methods = {m: (n - before.requests.get(m, 0.0)) / per for m, n in self.requests.items()}
        return {
            "requests": sum(methods.values()),
            **{f"requests_{m}": v for m, v in sorted(methods.items()) if v > 0},
            "events": (self.events - before.events) / per,
            "bytes": (self.sent_bytes - before.sent_bytes) / per,
            "cpu_s": (self.cpu - before.cpu) / per,
        }


def listening_port(taken: set[int]) -> int:
    """A port for an agent's /metrics, free now and below the kernel's ephemeral range: a port
    the kernel hands out (``free_port``) was taken, one run in a few at 48 agents, by one of
    the fleet's own outgoing connections between choosing it and the agent binding it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


@dataclass(frozen=True)
class LeaseFigures:
    lost: float  # openrange_leases_lost_total
    delays: dict[float, float] | None  # keepalive delay buckets: bound -> cumulative count; None: not measured

    @classmethod
    def parse(cls, text: str) -> LeaseFigures:
        lost, delays = 0.0, None
        for family in text_string_to_metric_families(text):
            if family.name == "openrange_leases_lost":
                lost = sum(s.value for s in family.samples if s.name.endswith("_total"))
            elif family.name == "openrange_lease_keepalive_delay_seconds":
                buckets = [s for s in family.samples if s.name.endswith("_bucket")]
                delays = {float(s.labels["le"]): s.value for s in buckets}
        return cls(lost, delays)

    def since(self, before: LeaseFigures | None) -> tuple[float, float | None]:
        """Leases lost since ``before``, and the worst keepalive delay since then as the upper
        bound of the highest bucket that gained an observation (None: not measured)."""
        lost = self.lost - (before.lost if before else 0.0)
        if self.delays is None:
            return lost, None
        old = before.delays if before and before.delays else {}
        grew = [le for le, n in self.delays.items() if n > old.get(le, 0.0)]
        # cumulative buckets: the lowest bound whose count reaches every new observation
        total_new = self.delays[math.inf] - old.get(math.inf, 0.0)
        reached = [le for le in sorted(grew) if self.delays[le] - old.get(le, 0.0) >= total_new]
        return lost, (reached[0] if reached and total_new else 0.0)


class Fleet:
    """``count`` hosts running the code in ``src`` on one namespace, started together: each an
    ``openrange-agent`` process, or with ``per_process`` > 1 that many simulated hosts in each
    scripts/scalesim.py process, the simulated hosts joining ``join_rate`` a second in all.
    Per-host CPU and RSS are their process's shared out; a kill takes whole processes."""

    def __init__(
        self,
        src: str,
        endpoint: str,
        namespace: str,
        count: int,
        *,
        capacity: int,
        ttl: int,
        work: Path,
        per_process: int = 1,
        join_rate: float = 8.0,
    ) -> None:
        env = {**os.environ, "PYTHONPATH": src}
        self.hosts = [f"scale-{i}" for i in range(count)]
        self.groups = [self.hosts[i : i + per_process] for i in range(0, count, per_process)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._ports: dict[str, int] = {}
        self._port_files: list[Path] = []
        self._logs: list[Path] = []  # each process's output, by its index in ``procs``
        for index, group in enumerate(self.groups):
            common = ["--namespace", namespace, "--capacity", str(capacity), "--ttl", str(ttl)]
            common += ["--store", str(work / "store")]
            if per_process == 1:
                self._ports[group[0]] = listening_port(set(self._ports.values()))
                argv = [sys.executable, "-c", AGENT_MAIN, "--etcd", endpoint, "--host-id", group[0], *common]
                argv += ["--metrics-port", str(self._ports[group[0]]), "--no-dashboard", "--log-level", "WARNING"]
                # The leader's run report (one scan of every record, per mesh, every 10 minutes)
                # does not grow with the fleet; on, it would land in one measurement at random.
                argv += ["--report-interval", "0"]
            else:
                self._port_files.append(work / f"{namespace}-{index}.ports")
                argv = [sys.executable, str(Path(__file__).parent / "scalesim.py"), "--etcd", endpoint, *common]
                argv += ["--hosts", ",".join(group), "--ports", str(self._port_files[-1])]
                argv += ["--start-every", str(-(-count // per_process) / join_rate)]  # the fleet's rate
            self._logs.append(work / f"{namespace}-{index}.log")
            with self._logs[-1].open("wb") as log:
                self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        self.killed: dict[str, float] = {}  # host -> wall-clock time of its kill -9

    @property
    def live(self) -> list[str]:
        return [h for h in self.hosts if h not in self.killed]

    def quarter(self) -> list[str]:
        """The hosts of the last quarter of the processes (at least one; none of a fleet of one
        process, whose kill would leave no host to finish the run)."""
        if len(self.groups) < 2:
            return []
        return [h for group in self.groups[len(self.groups) - max(1, len(self.groups) // 4) :] for h in group]

    def check_running(self) -> None:
        exited = [p for p in self._alive() if p.poll() is not None]
        if exited:
            lines = self._logs[self.procs.index(exited[0])].read_text(errors="replace").strip().splitlines()
            said = lines[-1] if lines else "(nothing)"
            raise RuntimeError(f"{len(exited)} processes of the fleet exited; the first said: {said}")

    def said(self, lines: int = 3) -> list[str]:
        """The last lines each process of the fleet wrote (warnings and worse), for a failed run."""
        out = []
        for group, log in zip(self.groups, self._logs, strict=True):
            text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            out += [f"{group[0]}..: {line}" for line in text[-lines:]]
        return out

    def cpu(self) -> dict[str, float]:
        return self._shared(cpu_seconds)

    def rss(self) -> dict[str, float]:
        return self._shared(rss_mib)

    def lease(self) -> dict[str, LeaseFigures]:
        out = {}
        for host, port in self.ports().items():
            if host not in self.killed:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
                    out[host] = LeaseFigures.parse(answer.read().decode())
        return out

    def ports(self) -> dict[str, int]:
        """Each host's /metrics port (simulated hosts': once their process wrote them)."""
        for path in self._port_files:
            deadline = time.monotonic() + 600
            while not path.exists():
                self.check_running()
                assert time.monotonic() < deadline, f"no ports in {path} after 600 s"
                time.sleep(0.2)
            self._ports.update(json.loads(path.read_text()))
        self._port_files.clear()
        return self._ports

    def kill(self, hosts: Iterable[str]) -> None:
        for group, proc in zip(self.groups, self.procs, strict=True):
            if set(group) & set(hosts):
                proc.send_signal(signal.SIGKILL)
                self.killed.update((h, time.time()) for h in group)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for g, p in zip(self.groups, self.procs, strict=True) if g[0] not in self.killed]

    def _shared(self, per_process: Callable[[int], float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for group, proc in zip(self.groups, self.procs, strict=True):
            if group[0] not in self.killed:
                share = per_process(proc.pid) / len(group)
                out.update((h, share) for h in group)
        return out


def claim_latencies(
    records: Sequence[EpisodeRecord], start: float, seconds: float, slots: dict[str, int]
) -> list[float]:
    """Per attempt, the seconds between the moment it could have started on its host and its
    start: the later of its episode being ready (created, or its previous attempt closed) and
    a slot of that host being free, each slot taken in the order it freed. A slot is free at
    ``start`` (the submission), then ``seconds`` (the episode's length) after the start of the
    attempt that last took it: what the mesh adds between two episodes in one slot (result,
    commit, claim, dispatch) counts; waiting for a busy host does not. Hosts killed mid-run
    take their slots with them (their attempts never free one)."""
    attempts = []
    for record in records:
        for i, attempt in enumerate(record.history):
            ready = record.created_at if i == 0 else record.history[i - 1].finished_at or record.created_at
            attempts.append((attempt.started_at, ready, attempt.host))
    free = {host: [start] * n for host, n in slots.items()}
    out = []
    for started, ready, host in sorted(attempts):
        heap = free.get(host)
        slot = heapq.heappop(heap) if heap else started
        out.append(max(0.0, started - max(ready, slot)))
        if heap is not None:
            heapq.heappush(heap, started + seconds)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1); NaN for no values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def check_exactly_once(registry: Registry, keys: Keys, records: Sequence[EpisodeRecord], first: int, last: int) -> int:
    """Every episode succeeded, its attempts closed in order (the earlier ones given back), and
    etcd's history from revision ``first`` to ``last`` wrote each one's record final exactly
    once. Returns how many attempts were given back (requeued or released). Raises
    AssertionError with the facts."""
    again = 0
    for record in records:
        facts = f"{record.id}: {record.state.value} attempt {record.attempt} history {record.history}"
        assert record.state is State.SUCCEEDED, f"lost: {facts}"
        assert [a.n for a in record.history] == list(range(1, record.attempt + 1)), facts
        outcomes = [a.outcome for a in record.history]
        assert outcomes[-1] == "succeeded" and set(outcomes[:-1]) <= {"retried", "released"}, facts
        assert record.owner == record.history[-1].host, facts
        again += len(outcomes) - 1
    finals: Counter[str] = Counter()
    # A watch's batches carry the revisions of its own prefix: read up to the last write under
    # it, not to ``last`` itself (a host record written after would never come).
    last = min(last, max((kv.mod_revision for kv in registry.range(keys.episodes()).kvs), default=first))
    watch = registry.watch(keys.episodes(), first, puts_only=True)
    try:
        deadline = time.monotonic() + 120
        seen = first - 1
        while seen < last:
            assert time.monotonic() < deadline, f"etcd's history read up to {seen} of {last} in 120 s"
            batch = watch.next(5.0)
            seen = max(seen, batch.revision)
            for event in batch.events:
                if event.kv.mod_revision <= last and not is_live(event.kv.value):
                    finals.update(r.id for r in decode_records(event.kv.value) if r.state.is_terminal)
    finally:
        watch.cancel()
    twice = {i: n for i, n in finals.items() if n > 1}
    assert not twice, f"records written final more than once: {dict(list(twice.items())[:5])}"
    missing = [r.id for r in records if finals[r.id] != 1]
    assert not missing, f"records never written final in etcd's history: {missing[:5]}"
    return again


def fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line y = a + b x, over two or more distinct x."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b
