"""CPU seconds of process trees by kind, from ``/proc``: what a benchmark's episodes cost each
kind of process (the client, agents, their workers and dashboards, etcd), not only the wall
time they took.

    before = tree_cpu({"agent": agent_pids, "etcd": [etcd_pid]})
    ... the timed run ...
    spent = cpu_delta(before, tree_cpu({...}))   # {"agent": s, "workers": s, "dashboard": s, "etcd": s}

A root's descendants are found through ``/proc/<pid>/task/<tid>/children`` and named by their
command line: a forkserver and the workers it forks are "workers", a spawned child (the
dashboard) "dashboard"; other descendants count as their root's kind. A process that exits
between two samples takes its CPU with it, so sample trees whose processes live through the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except OSError:  # it exited
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _kind(pid: int, root_kind: str) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return root_kind
    if b"forkserver" in command:
        return "workers"
    if b"spawn_main" in command:
        return "dashboard"
    return root_kind


def tree_cpu(roots: Mapping[str, Iterable[int]]) -> dict[int, tuple[str, float]]:
    """Every process under the roots: pid -> (kind, CPU seconds so far)."""
    seen: dict[int, tuple[str, float]] = {}
    for kind, pids in roots.items():
        stack = [(pid, kind) for pid in pids]
        while stack:
            pid, parent_kind = stack.pop()
            if pid in seen:
                continue
            own = _kind(pid, parent_kind)
            cpu = _cpu(pid)
            if cpu is not None:
                seen[pid] = (own, cpu)
            stack += [(child, own) for child in _children(pid)]
    return seen


def cpu_delta(before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent per kind between two samples (processes in ``after``)."""
    spent: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        spent[kind] = spent.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
    return spent
