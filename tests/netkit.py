"""A real network partition for end-to-end tests: a Linux network namespace joined to the host
by a veth pair, so a process run inside it reaches etcd over a link the test can cut.

``Netns.create()`` makes the namespace and the pair under names unique to this run, on a /30 of
its own in 10.0.0.0/8; ``argv_prefix`` runs a command inside; ``cut()`` takes the host's end down,
so the namespace's packets are dropped silently (no reset, no ICMP: a partition, not a refusal);
``heal()`` brings it back. ``remove()`` deletes whatever exists of the pair, the namespace and the
fallback route, and is safe to call any number of times, even after a failed ``create()``.

Root and iproute2 are needed (``why_unavailable`` says what is missing). There is no netem or
matchall in every kernel (not in this machine's), so the cut is a link state, not a packet filter.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field


def why_unavailable() -> str | None:
    """Why no namespace can be made here, or None if one can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a network namespace needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (apt-get install -y iproute2)"
    probe = f"orprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@dataclass
class Netns:
    """One namespace, its veth pair and their addresses: ``host_ip`` on the host's end,
    ``inner_ip`` inside."""

    name: str = field(default_factory=lambda: f"or-{uuid.uuid4().hex[:8]}")
    subnet: tuple[int, int] = field(default_factory=lambda: (random.randrange(64, 250), random.randrange(0, 64)))
    is_cut: bool = False
    _made: list[str] = field(default_factory=list)

    @property
    def host_dev(self) -> str:
        return f"{self.name}h"  # at most 15 bytes (IFNAMSIZ - 1)

    @property
    def inner_dev(self) -> str:
        return f"{self.name}n"

    @property
    def host_ip(self) -> str:
        return f"10.{self.subnet[0]}.{self.subnet[1] * 4}.1"

    @property
    def inner_ip(self) -> str:
        return f"10.{self.subnet[0]}.{self.subnet[1] * 4}.2"

    @property
    def network(self) -> str:
        return f"10.{self.subnet[0]}.{self.subnet[1] * 4}.0/30"

    @property
    def argv_prefix(self) -> list[str]:
        """Prepend to a command line to run it inside (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> Netns:
        try:
            _ip("netns", "add", self.name)
            self._made.append("netns")
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.inner_dev)
            self._made.append("veth")
            _ip("link", "set", self.inner_dev, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("addr", "add", f"{self.inner_ip}/30", "dev", self.inner_dev, netns=self.name)
            _ip("link", "set", self.inner_dev, "up", netns=self.name)
            _ip("link", "set", "lo", "up", netns=self.name)
            # While the link is down its route is gone: without this, the host would send what
            # etcd writes to the namespace out of its default route instead of failing to.
            _ip("route", "add", "unreachable", self.network, "metric", "4000")
            self._made.append("route")
        except BaseException:
            self.remove()
            raise
        return self

    def cut(self) -> None:
        """Partition: the host's end goes down; packets either way are dropped."""
        _ip("link", "set", self.host_dev, "down")
        self.is_cut = True

    def heal(self) -> None:
        _ip("link", "set", self.host_dev, "up")
        self.is_cut = False

    def remove(self) -> None:
        for what in reversed(self._made):
            with contextlib.suppress(RuntimeError):
                if what == "route":
                    _ip("route", "del", "unreachable", self.network, "metric", "4000")
                elif what == "veth":
                    _ip("link", "del", self.host_dev)  # takes its peer with it
                else:
                    _ip("netns", "del", self.name)
        self._made.clear()
