"""The worker pool with real worker processes and a real store: what a worker writes, when."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from openrange_mesh.model import EpisodeSpec
from openrange_mesh.store import open_store
from openrange_mesh.store.events import FLUSH_SECONDS, NOT_KEPT, NOT_STORED, read_events
from openrange_mesh.worker.child import Done, WorkItem
from openrange_mesh.worker.mailbox import RESULT_FLUSH, SHARED_LINGER, SHORT_RESULTS_LINGER, Outbox
from openrange_mesh.worker.pool import WorkerPool
from openrange_mesh.worker.sinks import INLINE_COUNT

from .helpers import wait_until
from .sim_env import ENV_ID


def results(pool: WorkerPool, count: int, timeout: float = 30.0) -> list[Done]:
    """The next ``count`` results, read the way the agent's loop reads them."""
    got: list[Done] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} results"
        pool.wait(0.1)
        while not pool.results.empty():
            got.append(pool.results.get())
    return got


def test_short_episodes_share_files_written_before_their_results_reach_the_agent(tmp_path: Path) -> None:
    """A short episode's result names the worker's file of short episodes; the result leaves
    the worker only once that file is written (issue 14: a record never names a file that is
    not there yet), and many episodes share one file."""
    store_url = str(tmp_path / "store")
    store = open_store(store_url)
    pool = WorkerPool(1, store_url)
    pool.start()
    spec = EpisodeSpec(runtime="sleep", params={"seconds": 0, "events": 20})  # too many for its record
    got: list[Done] = []
    try:
        for n in range(20):  # as the agent does: the next episode as soon as the worker is free
            wait_until(lambda: pool.wait(0.05) or pool.idle() == 1, 10, what="the worker free")
            pool.dispatch([WorkItem(f"e{n}", 1, spec)])
            while not pool.results.empty():
                got.append(pool.results.get())
                assert store.exists(f"shared/{got[-1].events}.jsonl"), "named file written before the result"
        while len(got) < 20:
            got += results(pool, 1)
            assert store.exists(f"shared/{got[-1].events}.jsonl"), "named file written before the result"
    finally:
        pool.close()
    assert {d.kind for d in got} == {"succeeded"} and len({d.episode_id for d in got}) == 20
    for done in got:
        events = read_events(store, done.episode_id, 1, shared=done.events)
        assert [e["type"] for e in events] == ["reset", *["tick"] * 20, "terminal"], events
        assert done.inline_events is None
    assert len({d.events for d in got}) < 20, "short episodes share their files"
    assert store.list("episodes/") == []  # no directory of their own


def test_a_short_episodes_few_events_ride_in_its_result(tmp_path: Path) -> None:
    """A short episode's few small events (a reset, ticks, a terminal) leave the worker with its
    result, at once: no file, so its commit waits for none. Past INLINE_COUNT events, or
    INLINE_EVENTS bytes, they go to the worker's file of short episodes."""
    store_url = str(tmp_path / "store")
    pool = WorkerPool(1, store_url)
    pool.start()
    few = EpisodeSpec(runtime="sleep", params={"seconds": 0, "events": 2})
    big = EpisodeSpec(runtime="sleep", params={"seconds": 0, "result": {"x": 1}, "events": INLINE_COUNT})
    try:
        pool.dispatch([WorkItem("few", 1, few)])
        (done,) = results(pool, 1, timeout=SHARED_LINGER * 0.9 + 10)
        pool.dispatch([WorkItem("many", 1, big)])
        (many,) = results(pool, 1)
    finally:
        pool.close()
    assert done.kind == "succeeded" and done.events is None
    assert [e["type"] for e in done.inline_events or []] == ["reset", "tick", "tick", "terminal"]
    assert many.inline_events is None and many.events is not None  # 18 events: the shared file
    store = open_store(store_url)
    assert store.list("shared/") == [f"shared/{many.events}.jsonl"]  # none for the first


def test_an_episode_that_runs_past_the_first_flush_writes_its_own_chunks(tmp_path: Path) -> None:
    store_url = str(tmp_path / "store")
    pool = WorkerPool(1, store_url)
    pool.start()
    try:
        pool.dispatch([WorkItem("long", 1, EpisodeSpec(runtime="sleep", params={"seconds": 1.3, "events": 3}))])
        (done,) = results(pool, 1)
    finally:
        pool.close()
    assert done.kind == "succeeded" and done.events is None
    store = open_store(store_url)
    chunks = wait_until(lambda: store.list("episodes/long/attempt-1/"), 5, what="its chunks")
    assert len(chunks) >= 2  # one written while it ran, one at its end
    assert [e["type"] for e in read_events(store, "long", 1)] == ["reset", "tick", "tick", "tick", "terminal"]


def test_an_episodes_odd_data_fails_it_and_no_worker(tmp_path: Path) -> None:
    """A result too deep to pickle or to pack, or with an int key no reader would take, fails
    its episode in the worker with a reason; an event too deep to encode is dropped alone. The
    worker lives on (before, it crashed, and the released episode crashed its next worker)."""
    store_url = str(tmp_path / "store")
    pool = WorkerPool(1, store_url)
    pool.start()

    def item(name: str, **params: str) -> WorkItem:
        return WorkItem(name, 1, EpisodeSpec(runtime="tests.odd_runtimes:odd", params=params))

    try:
        pool.dispatch([item("deep", result="deep")])
        (deep,) = results(pool, 1)
        pool.dispatch([item("intkey", result="intkey")])
        (intkey,) = results(pool, 1)
        pool.dispatch([item("packdeep", result="packdeep")])
        (packdeep,) = results(pool, 1)
        pool.dispatch([item("events", events="deep"), item("after", result="fine")])
        events, after = sorted(results(pool, 2), key=lambda d: d.episode_id != "events")  # any order
        workers = pool.started()
    finally:
        pool.close()
    for done in (deep, intkey, packdeep):
        assert done.kind == "failed" and "not plain JSON data" in (done.error or "") and done.result == {}, done
    assert "nested deeper than" in (deep.error or "") and "map keys must be strings" in (intkey.error or "")
    assert events.kind == after.kind == "succeeded" and after.result == {"ok": True}
    store = open_store(store_url)
    kept = read_events(store, "events", 1, shared=events.events)
    assert [e["type"] for e in kept] == ["fine"], kept  # the deep one dropped, its neighbour kept
    assert workers == 1  # the same worker ran them all: none died


def test_short_results_wait_together_and_a_long_episodes_result_goes_at_once() -> None:
    """A batch's short results leave the worker together, at most SHORT_RESULTS_LINGER after
    the oldest started (each sending writes an events chunk and wakes the agent); an episode
    that ran RESULT_FLUSH or more goes at once, with the results waiting before it."""
    ours, theirs = multiprocessing.Pipe()
    outbox = Outbox(ours)
    now = time.monotonic()
    outbox.add(1, "a", now - 0.001, held=False)
    outbox.add(2, "b", now - 0.002, held=False)
    assert not outbox.stale()
    outbox.add(3, "c", now - RESULT_FLUSH - 0.01, held=False)
    assert outbox.stale()
    outbox.send(False)
    assert theirs.recv() == ("done", [(1, "a"), (2, "b"), (3, "c")], False)
    assert not outbox.stale()  # nothing ready

    started = time.monotonic()
    outbox.add(4, "d", started, held=False)
    while not outbox.stale():
        time.sleep(0.005)
    assert time.monotonic() - started >= SHORT_RESULTS_LINGER
    outbox.send(True)
    assert theirs.recv() == ("done", [(4, "d")], True)


def test_a_long_episode_with_a_few_events_keeps_them_in_its_result(tmp_path: Path) -> None:
    """An episode that ran past the first chunk's time but wrote no chunk (its reset and its
    terminal event only) keeps them in its record: no file, two directories and a rename for
    two events as it ends."""
    store_url = str(tmp_path / "store")
    pool = WorkerPool(1, store_url)
    pool.start()
    try:
        pool.dispatch([WorkItem("quiet", 1, EpisodeSpec(runtime="sleep", params={"seconds": FLUSH_SECONDS + 0.2}))])
        (done,) = results(pool, 1)
    finally:
        pool.close()
    assert done.kind == "succeeded" and done.events is None
    assert [e["type"] for e in done.inline_events or []] == ["reset", "terminal"]
    assert open_store(store_url).list("episodes/") == []


def test_events_are_kept_at_the_level_the_spec_asks(tmp_path: Path) -> None:
    """``events="none"`` stores nothing and says so (NOT_KEPT); ``"summary"`` keeps the reset
    and the terminal event; ``"all"`` every tick, alone or in a batch. A progress watchdog
    still sees every event: ticks 0.3 s apart keep a 0.6 s watchdog quiet with none kept."""
    store_url = str(tmp_path / "store")
    pool = WorkerPool(1, store_url)
    pool.start()

    def spec(level: str, **params: float) -> EpisodeSpec:
        return EpisodeSpec(runtime="sleep", params={"seconds": 0, "events": 20, **params}, events=level)

    watched = EpisodeSpec(
        runtime="sleep", params={"seconds": 1.5, "events": 5}, events="none", progress_timeout=0.6, batch=2
    )
    batch = [WorkItem(f"b-{level}", 1, spec(level), batch="claim-1") for level in ("none", "summary", "all")]
    try:
        pool.dispatch([WorkItem("s-none", 1, spec("none"))])
        single_none = results(pool, 1)
        pool.dispatch([WorkItem("s-summary", 1, spec("summary"))])
        single_summary = results(pool, 1)
        pool.dispatch([*batch, WorkItem("b-watched", 1, watched, batch="claim-1")])
        grouped = results(pool, 4)
    finally:
        pool.close()
    done = {d.episode_id: d for d in [*single_none, *single_summary, *grouped]}
    assert {d.kind for d in done.values()} == {"succeeded"}, done
    store = open_store(store_url)
    for name in ("s-none", "b-none", "b-watched"):
        assert done[name].events == NOT_KEPT and done[name].inline_events is None
        assert read_events(store, name, 1, batch="claim-1", shared=done[name].events) == []
    single = read_events(store, "s-summary", 1, shared=done["s-summary"].events, inline=done["s-summary"].inline_events)
    assert [e["type"] for e in single] == ["reset", "terminal"]
    types = {n: [e["type"] for e in read_events(store, n, 1, batch="claim-1")] for n in ("b-summary", "b-all")}
    assert types == {"b-summary": ["reset", "terminal"], "b-all": ["reset", *["tick"] * 20, "terminal"]}
    assert store.list("shared/") == [] and store.list("episodes/") == []  # nothing for what kept none


def test_a_batch_member_whose_first_events_were_refused_says_so_whenever_its_result_leaves(tmp_path: Path) -> None:
    """A batch [A, B]: A ends at once, and its result leaves with the batch's first chunk (A's
    events and B's first ones), which the store refuses. B's later chunks are written, and B's
    result must still say its events were not stored: it had said "stored", its reset lost."""
    store_url = str(tmp_path / "store")
    blocked = Path(store_url) / "batches" / "claim-1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the batch's folder goes: its chunks cannot be written")
    quick = EpisodeSpec(runtime="sleep", params={"seconds": 0, "events": 2}, batch=2)
    slow = EpisodeSpec(runtime="sleep", params={"seconds": 1.5, "events": 12}, batch=2)
    pool = WorkerPool(1, store_url)
    pool.start()
    healed = threading.Timer(SHORT_RESULTS_LINGER + 0.35, blocked.unlink)  # after the first chunk, before B ends
    try:
        pool.dispatch([WorkItem("a", 1, quick, batch="claim-1"), WorkItem("b", 1, slow, batch="claim-1")])
        healed.start()
        done = {d.episode_id: d for d in results(pool, 2)}
    finally:
        healed.cancel()
        pool.close()
    assert {d.kind for d in done.values()} == {"succeeded"}, done
    assert done["a"].events == done["b"].events == NOT_STORED
    written = [e["type"] for e in read_events(open_store(store_url), "b", 1, batch="claim-1")]
    assert "reset" not in written and written[-1] == "terminal"  # the later chunks did land


def one_at_a_time(spec: EpisodeSpec, count: int, each: Callable[[Done], None] | None = None) -> list[Done]:
    """``count`` episodes of ``spec`` on one real worker, each once the one before reported,
    as an agent with one worker runs single episodes; ``each`` sees each result as it comes."""
    pool = WorkerPool(1, None)
    pool.start()
    got: list[Done] = []
    try:
        for n in range(count):
            wait_until(lambda: pool.wait(0.05) or pool.idle() == 1, 20, what="the worker free")
            pool.dispatch([WorkItem(f"e{n}", 1, spec)])
            got += results(pool, 1)
            if each is not None:
                each(got[-1])
    finally:
        pool.close()
    return got


def _processes_running(argv: list[str]) -> list[int]:
    found, wanted = [], [a.encode() for a in argv]
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[:-1] == wanted:
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_an_env_that_runs_a_simulator_process_works_episode_after_episode() -> None:
    """The worker kills what an episode left running, and the gymnasium runtime keeps its env
    for the next episode: an env whose simulator is such a process was broken for every
    other episode (its reset found the simulator gone). Kept envs are closed before a sweep."""
    seconds = 600 + os.getpid() % 1000 / 1000  # names this test's simulators
    params = {"env": f"tests.sim_env:{ENV_ID}", "env_kwargs": {"seconds": seconds}}
    got = one_at_a_time(EpisodeSpec(runtime="gymnasium", params=params), 4)
    assert [(d.kind, d.error) for d in got] == [("succeeded", None)] * 4
    wait_until(lambda: not _processes_running(["sleep", str(seconds)]), 10, what="no simulator left running")


def test_a_runtime_whose_release_of_what_it_keeps_raises_still_has_its_leftovers_swept() -> None:
    seconds = 700 + os.getpid() % 1000 / 1000
    spec = EpisodeSpec(runtime="tests.odd_runtimes:keeps_badly", params={"seconds": seconds})

    def swept(done: Done) -> None:
        assert not _processes_running(["sleep", str(seconds)]), "swept before its result left"

    got = one_at_a_time(spec, 2, swept)
    assert [(d.kind, d.error) for d in got] == [("succeeded", None)] * 2
