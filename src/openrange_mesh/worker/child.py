"""The child side of an agent's worker process: runs groups of episodes, one at a time.

A crashing runtime (segfault, SIGKILL, OOM) takes only this process down; the agent notices the
dead process, fails the episode with the reason and starts a new worker. Runtimes are loaded by
name in the child, so nothing unpicklable crosses the pipe.

Protocol, all tuples over one ``multiprocessing`` connection:

    agent -> worker   ("run", [WorkItem, ...])     run these episodes in order
                      ("cancel", episode_id)       stop that episode (running or not yet started)
    worker -> agent   ("hello", None | why)        first: started, or why it cannot (then it exits)
                      ("fault", what failed)       its store refused events (the host's failure)
                      ("done", [(seq, Done), ...], end)
                                                   results, in order; ``seq`` numbers the items in
                                                   the order they were sent (1, 2, ...); ``end``:
                                                   the last one ends its group

What runs now is not a message: the worker writes it into a small shared-memory slot (slot.py)
that the agent reads when it checks timeouts. A batch's results are sent together when the
group ends, at once after an episode that ran ``RESULT_FLUSH`` or more, or once the oldest
one's episode started ``SHORT_RESULTS_LINGER`` ago (mailbox.py): one message, one
wake-up of the agent, per many short episodes instead of two per episode (on two busy
cores each wake-up costs the worker a context switch).

Events reach the store before the results that name them reach the agent (sinks.py): a batch's
chunk is written before its results are sent; a short single episode's result waits in the
outbox (mailbox.py) until the worker's file of short episodes is written, at most
``SHORT_FLUSH`` later, while the group's end is said at once, so the agent can give the worker
its next episode meanwhile. A worker killed in between loses those results: they come back as
released (unreported) and run again, no attempt spent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

from ..config import DEFAULT_CACHE_SIZE, default_cache_dir
from ..errors import MeshError, SpecError
from ..model import EpisodeSpec
from ..runtimes import load_runtime, release_kept
from ..specs import check_json, is_plain_json
from ..store import Store, open_store
from ..store.cache import SnapshotCache
from ..store.events import names_file
from . import files, reaper
from .mailbox import SHARED_LINGER, Inbox, Outbox
from .sinks import DROPPED, Chunks, ShortEvents, Single, Sink, Summary, Tagged
from .slot import Slot

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.25


# WorkItem and Done are values: never mutate one (``replace`` derives another). They are not
# frozen because frozen dataclasses build ~5x slower (0.8 us against 0.16), and each episode
# builds and unpickles one of each on either side of the pipe.
@dataclass(slots=True)
class WorkItem:
    episode_id: str
    attempt: int
    spec: EpisodeSpec
    batch: str | None = None  # the claim id of a batch: its episodes share event chunks
    token: int | None = None  # its claim's fencing token: its artifacts are stored under it

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled per episode: a plain tuple, not dataclasses' state (which calls fields() each time)
        return WorkItem, (self.episode_id, self.attempt, self.spec, self.batch, self.token)


@dataclass(slots=True)
class Done:
    episode_id: str
    attempt: int
    kind: str  # "succeeded", "failed", "cancelled", "timeout"
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    events: str | None = None  # the shared events file its events went to (a short episode's)
    artifacts: list[dict[str, Any]] | None = None  # what it uploaded (files.py): name, size, sha256
    inline_events: list[dict[str, Any]] | None = None  # its events, few enough for its record (sinks.py)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (
            self.episode_id,
            self.attempt,
            self.kind,
            self.error,
            self.result,
            self.events,
            self.artifacts,
            self.inline_events,
        )
        return Done, fields


def run_item(
    item: WorkItem,
    store: Store | None,
    is_cancelled: Callable[[], bool],
    on_progress: Callable[[], None],
    events: Sink,
    cache: SnapshotCache | None = None,
    outputs: files.Outputs | None = None,
) -> Done:
    """Run one episode to its end, from its snapshot, and upload what it wrote; every failure
    becomes a Done, never an exception: the episode's own fails it, the host's releases it."""
    own = outputs is None  # a worker passes its own, made once
    outputs = outputs or files.Outputs()
    try:
        try:
            if item.spec.snapshot is None:  # most episodes: nothing to pin, no environment to set
                done = _run(item, None, is_cancelled, on_progress, events)
            else:
                with files.snapshot(item.spec.snapshot, cache) as local, files.snapshot_env(local):
                    done = _run(item, local, is_cancelled, on_progress, events)
        finally:
            # before its files are read: a process it left running would write into this upload,
            # or into the next episode's, and could swap a file for a pipe that blocks the read.
            # What runtimes keep between episodes goes first: a kept env's simulator is one of
            # those processes, and killed under it, the env would fail the next episode.
            if reaper.has_children():
                release_kept()
                reaper.kill_leftovers()
        uploaded = outputs.upload(store, item.episode_id, item.attempt, item.token)
        return replace(done, artifacts=uploaded) if uploaded else done
    except files.EpisodeFault as exc:
        return Done(item.episode_id, item.attempt, "failed", str(exc))
    except files.HostFault as exc:  # the episode goes back untouched (pool.py tells health)
        return Done(item.episode_id, item.attempt, "released", str(exc))
    finally:
        if own:
            outputs.close()


def _run(
    item: WorkItem,
    local: Path | None,
    is_cancelled: Callable[[], bool],
    on_progress: Callable[[], None],
    events: Sink,
) -> Done:
    spec = item.spec
    started = time.monotonic()
    last_progress = started
    handle = None
    try:
        runtime = load_runtime(spec.runtime)
        handle = runtime.realize(spec.params, seed=spec.seed, **files.realize_args(runtime, local))
        handle.reset()
        while (outcome := handle.terminal()) is None:
            now = time.monotonic()
            if is_cancelled():
                return _finish(handle, events, item, "cancelled", "cancelled")
            if spec.timeout is not None and now - started > spec.timeout:
                return _finish(handle, events, item, "timeout", f"timed out after {spec.timeout:g} s")
            if spec.progress_timeout is not None and now - last_progress > spec.progress_timeout:
                return _finish(handle, events, item, "timeout", f"no progress for {spec.progress_timeout:g} s")
            handle.advance(SLICE_SECONDS)
            if handle.terminal() is not None:
                continue  # its last events go with its end (_finish), where they may ride in its record
            new = handle.poll_events()
            if new:
                events.add(new)
                on_progress()  # a store into shared memory (``Slot``): no need to throttle it
                last_progress = time.monotonic()
        kind = "succeeded" if outcome.succeeded else "failed"
        return _finish(handle, events, item, kind, outcome.error)
    except files.EpisodeFault:
        raise
    except (MeshError, Exception) as exc:
        log.debug("episode %s raised", item.episode_id, exc_info=True)
        if handle is not None:
            _safe_stop(handle)
        return Done(item.episode_id, item.attempt, "failed", f"{type(exc).__name__}: {exc}")
    except BaseException:  # SystemExit from SIGTERM: the agent's pool is stopping this worker
        if handle is not None:
            _safe_stop(handle)  # what the episode started (a command's process group) goes with it
        raise


def _finish(handle: Any, events: Sink, item: WorkItem, kind: str, error: str | None) -> Done:
    try:
        last = handle.poll_events()
        result = dict(handle.collect())
    finally:
        _safe_stop(handle)
    where, inline = events.finish(last)
    if not is_plain_json(result):  # the episode's own fault: it must not crash this worker or the commit
        kind, error, result = "failed", _not_plain(result), {}
    return Done(item.episode_id, item.attempt, kind, error, result, where, inline_events=inline)


def _not_plain(result: dict[str, Any]) -> str:
    try:
        check_json("result", result)
    except SpecError as exc:
        return f"its result is not plain JSON data: {exc}"
    return "its result is not plain JSON data"


def _safe_stop(handle: Any) -> None:
    try:
        handle.stop()
    except Exception:
        log.warning("stopping a handle failed", exc_info=True)


def worker_main(
    conn: Connection, store_url: str | None, cells: Any, marker: str = "", cache: tuple[str, int] | None = None
) -> None:
    """Entry point of a worker process. SIGTERM (the pool stopping it) stops the running episode
    and exits. SIGINT is the agent's business: on Ctrl-C it drains, letting running episodes
    finish. ``marker`` tags what its episodes exec, so the pool finds their leftovers should this
    process be SIGKILLed (reaper.py)."""
    # Out of the agent's process group, so a terminal's Ctrl-C reaches neither this process nor a
    # command it is starting: between fork and setsid that command has default handlers and is
    # still in this group, and a SIGINT there failed its episode ("killed by signal SIGINT").
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _ignore)  # a handler, not SIG_IGN, which an episode's exec would inherit
    reaper.become_subreaper(marker)
    reaper.stop_with_agent()
    try:
        try:
            store = open_store(store_url) if store_url else None
            snapshots = _cache(store, cache)
        except Exception as exc:  # any reason at all: one line to the agent, not a traceback per restart
            conn.send(("hello", f"cannot open store {store_url}: {exc}"))
            return
        conn.send(("hello", None))
        _serve(conn, store, Slot(cells), snapshots)
    except (EOFError, OSError):
        return  # the agent is gone (its end of the pipe closed)
    finally:  # stopped mid-episode: the handle is stopped; what escaped its stop() goes now
        reaper.kill_leftovers()


def _cache(store: Store | None, cache: tuple[str, int] | None) -> SnapshotCache | None:
    """The host's snapshot cache (shared by its workers: locks per digest), if it has a store."""
    if store is None:
        return None
    directory, size = cache or (default_cache_dir(), DEFAULT_CACHE_SIZE)
    return SnapshotCache(store, directory, size)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _serve(conn: Connection, store: Store | None, slot: Slot, cache: SnapshotCache | None) -> None:
    inbox, outbox = Inbox(conn), Outbox(conn)
    short = ShortEvents(store, outbox.fault) if store is not None else None  # short single episodes' events
    sinks = Sinks(store, short, outbox.fault, cache, files.Outputs())

    def write_short() -> None:
        if short is not None and short.pending:
            outbox.release(short.flush() is not None)

    try:
        while True:  # until the pipe breaks (the agent is gone): worker_main returns then
            if not inbox.groups:
                if outbox.held and not inbox.ready(SHARED_LINGER):
                    write_short()  # idle: write them now rather than when work comes
                inbox.wait()
                continue
            _run_group(inbox.groups.popleft(), inbox, outbox, sinks, slot, write_short)
    finally:  # stopped (SIGTERM) or orphaned: what short episodes left is written, and said, still
        with contextlib.suppress(OSError):
            write_short()
        sinks.outputs.close()


@dataclass(frozen=True)
class Sinks:
    store: Store | None
    short: ShortEvents | None  # the file of short single episodes (None: no store)
    report: Callable[[str], None]
    cache: SnapshotCache | None  # the host's snapshots
    outputs: files.Outputs  # this worker's artifacts directory

    def of(self, item: WorkItem, batch: Chunks | None) -> Sink:
        """Where an episode's events go: its batch's shared chunks, or its own chunks unless
        it ends before the first is due (then the worker's file of short episodes); only
        those its spec keeps (``EpisodeSpec.events``)."""
        level = item.spec.events
        if level == "none":
            return DROPPED
        sink: Single | Tagged
        if batch is not None and item.batch is not None:
            sink = Tagged(batch, item)
        else:
            sink = Single(self.store, item, self.short, self.report)
        return Summary(sink) if level == "summary" else sink


def _run_group(
    group: list[tuple[int, WorkItem]],
    inbox: Inbox,
    outbox: Outbox,
    sinks: Sinks,
    slot: Slot,
    write_short: Callable[[], None],
) -> None:
    first = group[0][1]
    batch = Chunks(sinks.store, first, sinks.report) if first.batch is not None else None

    def send(end: bool) -> None:  # a batch's events reach the store before its results leave
        if batch is not None:
            batch.flush()
            if batch.lost_by:
                outbox.mark_not_stored(batch.lost_by)
        outbox.send(end)

    def check(episode_id: str) -> bool:  # between a running episode's slices
        if outbox.stale():
            send(False)
        if outbox.held_due():
            write_short()
        return inbox.is_cancelled(episode_id)

    for index, (seq, item) in enumerate(group):
        inbox.poll()
        if outbox.held_due() or (sinks.short is not None and sinks.short.full):
            write_short()
        started = time.monotonic()
        if item.episode_id in inbox.cancelled:
            done = Done(item.episode_id, item.attempt, "cancelled", "cancelled before it started")
        else:
            slot.start(seq, started)
            sink = sinks.of(item, batch)
            check_item = partial(check, item.episode_id)
            done = run_item(item, sinks.store, check_item, slot.progress, sink, sinks.cache, sinks.outputs)
            slot.clear()
        inbox.cancelled.discard(item.episode_id)
        outbox.add(seq, done, started, held=names_file(done.events))
        if index < len(group) - 1:
            if outbox.stale():
                send(False)
            continue
        send(end=True)
