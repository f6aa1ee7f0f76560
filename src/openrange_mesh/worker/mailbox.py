"""The worker's two ends of its pipe to the agent (child.py's protocol): what came in (``Inbox``)
and the results not yet sent (``Outbox``). One thread: the worker's."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Container
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from ..store.events import NOT_STORED

# How often a worker looks for cancels and queued batches while it runs a batch, at most: each
# look is a poll() syscall, and a batch's episodes may be shorter than a millisecond.
POLL_EVERY = 0.005
# An episode that ran this long is reported at once, with the results waiting before it: a
# worker that crashes loses at most this much of a long episode's work.
RESULT_FLUSH = 0.02
# Shorter episodes' results wait together at most this long (a long episode's slices check it
# too, so the results before it do not wait for it). Each sending writes the batch's events
# chunk first (a file: sinks.py) and wakes the agent, which commits a batch only when it ends or
# after agent/holdings.py COMMIT_LINGER anyway: at 20 ms a CartPole worker wrote a file and a
# message per ~60 episodes. A crash loses at most this much of short episodes' work.
SHORT_RESULTS_LINGER = 0.25
# Results whose events wait in the file of short episodes are sent once it is written: when the
# oldest has waited this long, or the worker has had no work for SHARED_LINGER. The bound on
# how late a short episode's commit comes, against one file per this many seconds per worker.
SHORT_FLUSH = 0.1
SHARED_LINGER = 0.05


class Inbox:
    """What the agent sent: groups to run in order (each item with its seq), and cancels. Read
    between episodes and while one runs, at most every ``POLL_EVERY``, so a cancel or a batch
    queued ahead arrives promptly."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.groups: deque[list[tuple[int, Any]]] = deque()
        self.cancelled: set[str] = set()
        self.received = 0  # items received so far: the seq of the last one
        self.polled_at = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if now - self.polled_at < POLL_EVERY:
            return
        self.polled_at = now
        while self.conn.poll():
            self._take(self.conn.recv())

    def wait(self) -> None:
        self._take(self.conn.recv())

    def ready(self, timeout: float) -> bool:
        """Whether a message arrives within ``timeout`` seconds (it is read by ``wait``)."""
        return self.conn.poll(timeout)

    def _take(self, message: tuple[Any, ...]) -> None:
        if message[0] == "cancel":
            self.cancelled.add(message[1])
            return
        group = []
        for item in message[1]:
            self.received += 1
            group.append((self.received, item))
        self.groups.append(group)

    def is_cancelled(self, episode_id: str) -> bool:
        self.poll()
        return episode_id in self.cancelled


class Outbox:
    """Results not yet sent. ``ready`` ones (their events in the store) go when their group
    ends, as soon as one of them ran ``RESULT_FLUSH`` or more, or once the oldest one's episode
    started ``SHORT_RESULTS_LINGER`` ago; ``held`` ones, whose
    events wait in the file of short episodes, go right after that file is written
    (``release``), so the agent never commits a record naming a file that is not there."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ready: list[tuple[int, Any]] = []
        self.oldest = 0.0
        self.urgent = False  # a ready result's episode ran RESULT_FLUSH or more
        self.held: list[tuple[int, Any]] = []
        self.held_since = 0.0

    def add(self, seq: int, done: Any, started: float, *, held: bool) -> None:
        if held:
            if not self.held:
                self.held_since = time.monotonic()
            self.held.append((seq, done))
            return
        now = time.monotonic()
        if not self.ready:
            self.oldest = started
        self.urgent |= now - started >= RESULT_FLUSH
        self.ready.append((seq, done))

    def stale(self) -> bool:
        return bool(self.ready) and (self.urgent or time.monotonic() - self.oldest >= SHORT_RESULTS_LINGER)

    def held_due(self) -> bool:
        return bool(self.held) and time.monotonic() - self.held_since >= SHORT_FLUSH

    def mark_not_stored(self, lost: Container[tuple[str, int]]) -> None:
        """The ready results of the attempts (episode, attempt) whose events were in a refused
        batch chunk: their records say so."""
        self.ready = [
            (seq, replace(done, events=NOT_STORED) if (done.episode_id, done.attempt) in lost else done)
            for seq, done in self.ready
        ]

    def send(self, end: bool) -> None:
        """The ready results, and whether the group ended (the worker is free: the agent may
        claim for it in the txn that commits them)."""
        if self.ready or end:
            self.conn.send(("done", self.ready, end))
            self.ready, self.urgent = [], False

    def release(self, written: bool) -> None:
        """The file of short episodes was written (or refused): send the results it held."""
        held, self.held = self.held, []
        if not written:
            held = [(seq, replace(done, events=NOT_STORED)) for seq, done in held]
        if held:
            self.conn.send(("done", held, False))

    def fault(self, what: str) -> None:
        self.conn.send(("fault", what))
