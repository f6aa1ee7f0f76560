"""The runtimes, run for real: gymnasium envs, subprocesses, the sleep runtime in a child process."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium
import pytest

from openrange_mesh.errors import RuntimeFailure, SpecError, UnknownRuntime
from openrange_mesh.runtimes import ENTRY_POINT_GROUP, Handle, Outcome, known_runtimes, load_runtime
from openrange_mesh.runtimes.sleep import FAIL_ERROR
from openrange_mesh.store.events import decode_events, encode_events

from .helpers import wait_until

PY = sys.executable
CARTPOLE = {"env": "CartPole-v1"}


def drive(handle: Handle, slice_seconds: float = 0.2, timeout: float = 10.0) -> Outcome:
    """Advance ``handle`` until it is terminal, as the worker loop does."""
    deadline = time.monotonic() + timeout
    while (outcome := handle.terminal()) is None:
        assert time.monotonic() < deadline, "episode did not end in time"
        handle.advance(slice_seconds)
    return outcome


def run(runtime: str, params: dict[str, Any], seed: int | None = None) -> tuple[Outcome, list[dict[str, Any]], Any]:
    handle = load_runtime(runtime).realize(params, seed=seed)
    try:
        handle.reset()
        outcome = drive(handle)
        return outcome, handle.poll_events(), handle.collect()
    finally:
        handle.stop()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for its reaper counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- the contract, on every built-in ------------------------------------------------------------

CONTRACT_CASES: dict[str, dict[str, Any]] = {
    "gymnasium": {"env": "CartPole-v1", "max_steps": 20},
    "command": {"argv": [PY, "-c", 'print(\'{"type": "hello"}\')']},
    "sleep": {"seconds": 0.02, "events": 2},
}


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
def test_contract(name: str) -> None:
    runtime = load_runtime(name)
    assert runtime.name == name and name in known_runtimes()
    params = CONTRACT_CASES[name]
    runtime.validate(params)
    handle = runtime.realize(params, seed=3)
    with pytest.raises(RuntimeFailure):
        handle.advance(0.01)  # before reset
    handle.reset()
    json.dumps(handle.surface(), allow_nan=False)
    assert drive(handle) == Outcome(True)
    handle.advance(0.01)  # terminal: a no-op
    events = handle.poll_events()
    assert events[0]["type"] == "reset" and events[-1]["type"] == "terminal"
    assert all(isinstance(e["type"], str) and abs(e["t"] - time.time()) < 60 for e in events)
    json.dumps(events, allow_nan=False)
    assert handle.poll_events() == []
    json.dumps(handle.collect(), allow_nan=False)
    handle.stop()
    handle.stop()
    with pytest.raises(RuntimeFailure):
        handle.advance(0.01)


def test_runtimes_pickle_and_reload_by_name() -> None:
    for name in known_runtimes():
        runtime = load_runtime(name)
        assert load_runtime(name) is runtime  # cached
        assert pickle.loads(pickle.dumps(runtime)).name == runtime.name


# --- gymnasium ----------------------------------------------------------------------------------


def bare_cartpole(seed: int) -> tuple[float, int]:
    """The same episode without us: gymnasium's own loop, random actions from the seeded space."""
    env = gymnasium.make("CartPole-v1")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    total, steps, done = 0.0, 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total, steps, done = total + float(reward), steps + 1, terminated or truncated
    env.close()
    return total, steps


def test_cartpole_is_deterministic_for_a_seed() -> None:
    first = run("gymnasium", CARTPOLE, seed=7)
    second = run("gymnasium", CARTPOLE, seed=7)
    outcome, events, result = first
    assert outcome == Outcome(True)
    assert result["terminated"] and not result["truncated"]
    assert (result["return"], result["steps"]) == bare_cartpole(7)
    assert types(events) == ["reset", "terminal"]
    assert events[-1]["return"] == result["return"] and events[-1]["steps"] == result["steps"]
    assert second[0] == outcome and second[2] == result
    assert len({run("gymnasium", CARTPOLE, seed=s)[2]["steps"] for s in range(5)}) > 1


def test_an_env_is_kept_between_episodes_and_each_starts_afresh() -> None:
    """An env is made once per process and reused: a reused one runs an episode exactly as a
    fresh env does, whatever the episode before it did (cut short, or another seed)."""
    runtime = load_runtime("gymnasium")
    first = runtime.realize(CARTPOLE, seed=3)
    first.reset()
    first.advance(0.0)  # one step, then stopped mid-episode
    env = first._env  # type: ignore[attr-defined]
    first.stop()
    again = runtime.realize(CARTPOLE, seed=7)
    assert again._env is env, "the kept env, not a new one"  # type: ignore[attr-defined]
    again.reset()
    while again.terminal() is None:
        again.advance(0.5)
    result = again.collect()
    again.stop()
    assert (result["return"], result["steps"]) == bare_cartpole(7)


def test_an_env_that_raised_is_not_kept() -> None:
    runtime = load_runtime("gymnasium")
    params = {**CARTPOLE, "policy": "tests.policies:explode"}
    handle = runtime.realize(params, seed=1)
    handle.reset()
    handle.advance(0.5)
    env = handle._env  # type: ignore[attr-defined]
    handle.stop()
    assert handle.terminal() == Outcome(False, "ValueError: policy exploded")
    fresh = runtime.realize(params, seed=1)
    assert fresh._env is not env  # type: ignore[attr-defined]
    fresh.stop()


def test_cartpole_surface_describes_the_spaces() -> None:
    handle = load_runtime("gymnasium").realize(CARTPOLE, seed=0)
    surface = handle.surface()
    handle.stop()
    assert surface["action_space"] == {"type": "Discrete", "n": 2, "start": 0}
    observation = surface["observation_space"]
    assert observation["type"] == "Box" and observation["shape"] == [4]
    assert observation["low"][1] == "-inf" and observation["high"][1] == "inf"


def test_custom_policy_by_import_path_and_recorded_steps() -> None:
    params = {**CARTPOLE, "policy": "tests.policies:push_left", "record_steps": True}
    outcome, events, result = run("gymnasium", params, seed=1)
    steps = [e for e in events if e["type"] == "step"]
    assert outcome.succeeded and len(steps) == result["steps"] > 0
    assert {e["action"] for e in steps} == {0}
    assert [e["step"] for e in steps] == list(range(1, result["steps"] + 1))
    leaning = run("gymnasium", {**CARTPOLE, "policy": "tests.policies:lean_with_pole"}, seed=1)[2]
    assert leaning["steps"] > result["steps"]


def test_max_steps_truncates() -> None:
    outcome, _, result = run("gymnasium", {**CARTPOLE, "max_steps": 5, "policy": "tests.policies:lean_with_pole"}, 2)
    assert outcome == Outcome(True)
    assert result == {"return": 5.0, "steps": 5, "terminated": False, "truncated": True}


def test_realize_reuses_a_parse_only_for_the_same_params() -> None:
    """Realize keeps the params it parsed last (a batch's episodes share theirs); params that
    differ, even as 1 differs from True or 1.0 and None from NaN, are parsed afresh."""
    lean = {**CARTPOLE, "policy": "tests.policies:lean_with_pole"}
    for steps in (3, 3, 7):
        assert run("gymnasium", {**lean, "max_steps": steps}, 2)[2]["steps"] == steps
    runtime = load_runtime("gymnasium")
    for odd in (True, 3.0):
        with pytest.raises(SpecError):
            runtime.realize({**lean, "max_steps": odd}, seed=2)
    assert run("gymnasium", {**lean, "max_steps": 3}, 2)[2]["steps"] == 3
    runtime.realize({**lean, "max_steps": None}, seed=2).stop()
    with pytest.raises(SpecError):
        runtime.realize({**lean, "max_steps": math.nan}, seed=2)


def test_a_policy_that_raises_fails_the_episode() -> None:
    outcome, events, _ = run("gymnasium", {**CARTPOLE, "policy": "tests.policies:explode"}, seed=1)
    assert outcome == Outcome(False, "ValueError: policy exploded")
    assert events[-1]["type"] == "terminal" and not events[-1]["succeeded"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.env"),
        ({"env": "NoSuchEnv-v0"}, "params.env"),
        ({"env": "CartPole-v9"}, "params.env"),
        ({"env": "tests.no_such_module:CartPole-v1"}, "params.env"),
        ({"env": 5}, "params.env"),
        ({**CARTPOLE, "max_steps": 0}, "params.max_steps"),
        ({**CARTPOLE, "max_steps": "10"}, "params.max_steps"),
        ({**CARTPOLE, "max_steps": True}, "params.max_steps"),
        ({**CARTPOLE, "policy": "greedy"}, "params.policy"),
        ({**CARTPOLE, "policy": "tests.no_such_module:act"}, "params.policy"),
        ({**CARTPOLE, "policy": "tests.policies:no_such_policy"}, "params.policy"),
        ({**CARTPOLE, "policy": "tests.policies:NOT_CALLABLE"}, "params.policy"),
        ({**CARTPOLE, "env_kwargs": ["x"]}, "params.env_kwargs"),
        ({**CARTPOLE, "record_steps": "yes"}, "params.record_steps"),
        ({**CARTPOLE, "max_step": 10}, "params.max_step"),
    ],
)
def test_gymnasium_bad_params_name_the_field(params: dict[str, Any], field: str) -> None:
    runtime = load_runtime("gymnasium")
    for call in (lambda: runtime.validate(params), lambda: runtime.realize(params, seed=0)):
        with pytest.raises(SpecError) as caught:
            call()
        assert caught.value.field == field


def test_cartpole_checkpoint_restore_round_trip() -> None:
    runtime = load_runtime("gymnasium")
    handle = runtime.realize(CARTPOLE, seed=11)
    handle.reset()
    for _ in range(5):
        handle.advance(0.0)  # a zero slice still takes one step
    assert handle.collect()["steps"] == 5
    saved = handle.checkpoint()
    drive(handle)
    finished = handle.collect()
    assert finished == run("gymnasium", CARTPOLE, seed=11)[2]

    handle.restore(saved)  # the same handle, rewound
    assert handle.terminal() is None and handle.collect()["steps"] == 5
    drive(handle)
    assert handle.collect() == finished
    handle.stop()

    resumed = runtime.realize(CARTPOLE, seed=11, snapshot=saved)  # a new handle, as on another host
    resumed.reset()
    assert resumed.collect()["steps"] == 5
    drive(resumed)
    assert resumed.collect() == finished
    resumed.stop()

    with pytest.raises(RuntimeFailure):
        runtime.realize({"env": "Acrobot-v1"}, seed=11, snapshot=saved)
    with pytest.raises(RuntimeFailure):
        runtime.realize(CARTPOLE, seed=11, snapshot=b"not a checkpoint")


# --- command ------------------------------------------------------------------------------------


def test_command_success_and_events() -> None:
    script = (
        "import json\n"
        "print(json.dumps({'type': 'progress', 'n': 1, 't': 'sim time'}))\n"
        "print(json.dumps({'x': 2}))\n"
        "print('[1, 2]')\n"
        "print('plain words')\n"
        "print('{not json')\n"
        "print('no newline at the end', end='')\n"
    )
    outcome, events, result = run("command", {"argv": [PY, "-c", script]})
    assert outcome == Outcome(True)
    assert result == {"exit_status": 0, "signal": None, "stderr_tail": []}
    assert types(events) == ["reset", "progress", "output", "log", "log", "log", "log", "terminal"]
    assert events[1]["n"] == 1 and isinstance(events[1]["t"], float)  # "t" is always our clock
    assert events[2]["x"] == 2
    assert [e["line"] for e in events[3:7]] == ["[1, 2]", "plain words", "{not json", "no newline at the end"]
    assert events[-1]["exit_status"] == 0


def test_command_deeply_nested_json_lines_stay_text_and_the_episode_succeeds() -> None:
    script = (
        "print('{\"deep\": ' + '[' * 100_000 + ']' * 100_000 + '}')\n"  # json.loads: RecursionError
        "print('{\"a\": ' + '[' * 64 + ']' * 64 + '}')\n"  # parses, but nests 65 deep
        "print('{\"a\": ' + '[' * 63 + ']' * 63 + '}')\n"  # 64 deep: an event
    )
    outcome, events, _ = run("command", {"argv": [PY, "-c", script]})
    assert outcome == Outcome(True)
    assert types(events)[0] == "reset" and types(events)[-2:] == ["output", "terminal"]
    logs = events[1:-2]
    assert {e["type"] for e in logs} == {"log"} and logs[0]["line"].startswith('{"deep": [[[')
    assert logs[-1]["line"] == '{"a": ' + "[" * 64 + "]" * 64 + "}"
    assert sum(len(e["line"]) for e in logs[:-1]) == 200_010  # all of it, cut into pieces
    assert decode_events(encode_events(events)) == events  # what a worker writes to the store


def test_command_exit_status_and_stderr() -> None:
    script = "import sys; sys.stderr.write('warming up\\nboom\\n'); sys.exit(3)"
    outcome, events, result = run("command", {"argv": [PY, "-c", script]})
    assert outcome == Outcome(False, "exit status 3: boom")
    assert result == {"exit_status": 3, "signal": None, "stderr_tail": ["warming up", "boom"]}
    assert events[-1]["error"] == "exit status 3: boom"


def test_command_killed_by_a_signal() -> None:
    outcome, _, result = run("command", {"cmd": f"{PY} -c 'import os, signal; os.kill(os.getpid(), signal.SIGTERM)'"})
    assert outcome == Outcome(False, "killed by signal SIGTERM")
    assert result["signal"] == "SIGTERM" and result["exit_status"] is None


def test_command_env_cwd_and_seed(tmp_path: Path) -> None:
    script = (
        "import json, os\n"
        "env = os.environ\n"
        "print(json.dumps({'foo': env['FOO'], 'seed': env['OPENRANGE_SEED'], 'cwd': os.getcwd()}))"
    )
    params = {"argv": [PY, "-c", script], "env": {"FOO": "bar"}, "cwd": str(tmp_path)}
    _, events, _ = run("command", params, seed=42)
    assert events[1] | {"t": 0} == {
        "type": "output",
        "t": 0,
        "foo": "bar",
        "seed": "42",
        "cwd": str(tmp_path),
    }


def test_stop_kills_the_whole_group_without_blocking_advance() -> None:
    cmd = """sh -c 'sleep 30 & echo "{\\"child\\": $!}"; wait'"""
    handle = load_runtime("command").realize({"cmd": cmd}, seed=None)
    handle.reset()
    leader = handle.surface()["pid"]

    def child_pid() -> int | None:
        handle.advance(0.05)
        return next((e["child"] for e in handle.poll_events() if "child" in e), None)

    child = wait_until(child_pid, what="the command to report its child")
    assert child is not None
    started = time.monotonic()
    handle.advance(0.2)
    assert 0.15 < time.monotonic() - started < 0.6 and handle.terminal() is None
    assert is_alive(leader) and is_alive(child)
    handle.stop()
    handle.stop()
    assert not is_alive(leader)
    wait_until(lambda: not is_alive(child), timeout=5, what=f"child {child} to die")


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    handle = load_runtime("command").realize({"cmd": "sh -c 'trap \"\" TERM; echo ready; sleep 30'"}, seed=None)
    handle.reset()
    leader = handle.surface()["pid"]

    def ready() -> bool:
        handle.advance(0.05)
        return any(e.get("line") == "ready" for e in handle.poll_events())

    wait_until(ready, what="the command to trap SIGTERM")
    started = time.monotonic()
    handle.stop()
    assert time.monotonic() - started >= 1.0  # the grace, then SIGKILL
    assert not is_alive(leader)


def test_command_cannot_start_or_checkpoint() -> None:
    runtime = load_runtime("command")
    handle = runtime.realize({"argv": ["/no/such/program"]}, seed=None)
    with pytest.raises(RuntimeFailure, match="cannot start"):
        handle.reset()
    handle.stop()
    handle = runtime.realize({"argv": ["true"]}, seed=None)
    assert not handle.supports_checkpoint
    with pytest.raises(RuntimeFailure):
        handle.checkpoint()
    with pytest.raises(RuntimeFailure):
        runtime.realize({"argv": ["true"]}, seed=None, snapshot=b"x")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.argv"),
        ({"argv": ["true"], "cmd": "true"}, "params.argv"),
        ({"argv": []}, "params.argv"),
        ({"argv": "true"}, "params.argv"),
        ({"argv": ["true", 1]}, "params.argv"),
        ({"cmd": "echo 'unbalanced"}, "params.cmd"),
        ({"cmd": "   "}, "params.cmd"),
        ({"cmd": "true", "env": {"N": 1}}, "params.env"),
        ({"cmd": "true", "cwd": 3}, "params.cwd"),
        ({"cmd": "true", "shell": True}, "params.shell"),
    ],
)
def test_command_bad_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_runtime("command").validate(params)
    assert caught.value.field == field


# --- sleep --------------------------------------------------------------------------------------


def test_sleep_ok_ticks_then_ends_with_its_result() -> None:
    outcome, events, result = run("sleep", {"seconds": 0.1, "events": 3, "result": {"score": 1}})
    assert outcome == Outcome(True) and result == {"score": 1}
    assert types(events) == ["reset", "tick", "tick", "tick", "terminal"]
    assert [e["index"] for e in events[1:4]] == [1, 2, 3]
    assert events[-1]["elapsed"] >= 0.1


def test_sleep_fail() -> None:
    outcome, events, _ = run("sleep", {"seconds": 0, "mode": "fail"})
    assert outcome == Outcome(False, FAIL_ERROR)
    assert events[-1]["error"] == FAIL_ERROR


def test_sleep_hang_is_never_terminal() -> None:
    handle = load_runtime("sleep").realize({"seconds": 0, "mode": "hang", "events": 5}, seed=None)
    handle.reset()
    started = time.monotonic()
    for _ in range(5):
        handle.advance(0.02)
        assert handle.terminal() is None
    assert time.monotonic() - started >= 0.1  # each slice waited its full length
    assert types(handle.poll_events()) == ["reset"]
    handle.stop()


def crash_in_child(runtime: Any) -> None:
    handle = runtime.realize({"seconds": 0.05, "mode": "crash"}, seed=None)
    handle.reset()
    drive(handle)
    sys.exit(0)  # not reached: the handle killed this process


def test_sleep_crash_kills_its_process() -> None:
    child = multiprocessing.get_context("spawn").Process(target=crash_in_child, args=(load_runtime("sleep"),))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL


def test_sleep_checkpoint_restore_round_trip() -> None:
    runtime = load_runtime("sleep")
    params = {"seconds": 0.6, "events": 3}
    handle = runtime.realize(params, seed=None)
    handle.reset()
    handle.advance(0.3)  # past the first tick (0.2 s), before the second (0.4 s)
    saved = handle.checkpoint()
    assert json.loads(saved)["ticks"] == 1
    drive(handle)
    assert handle.terminal() == Outcome(True)
    handle.restore(saved)
    assert handle.terminal() is None
    handle.stop()

    resumed = runtime.realize(params, seed=None, snapshot=saved)
    resumed.reset()
    started = time.monotonic()
    drive(resumed)
    assert time.monotonic() - started < 0.5  # only what was left of the 0.6 s
    assert [e.get("index") for e in resumed.poll_events() if e["type"] == "tick"] == [2, 3]
    with pytest.raises(RuntimeFailure):
        resumed.restore(b'{"v": 99}')
    resumed.stop()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seconds": -1}, "params.seconds"),
        ({"seconds": "1"}, "params.seconds"),
        ({"seconds": float("nan")}, "params.seconds"),
        ({"mode": "explode"}, "params.mode"),
        ({"events": -1}, "params.events"),
        ({"result": [1]}, "params.result"),
    ],
)
def test_sleep_bad_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_runtime("sleep").validate(params)
    assert caught.value.field == field


# --- loading ------------------------------------------------------------------------------------


def test_unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(UnknownRuntime) as caught:
        load_runtime("no-such-runtime")
    assert caught.value.field == "runtime"
    assert {"command", "gymnasium", "sleep"} <= set(caught.value.known)
    assert "command, gymnasium, sleep" in str(caught.value)


def test_module_attr_names() -> None:
    runtime = load_runtime("openrange_mesh.runtimes.sleep:SleepRuntime")
    assert runtime.name == "sleep"
    assert run("openrange_mesh.runtimes.sleep:SleepRuntime", {"seconds": 0})[0] == Outcome(True)
    for bad in ("tests.no_such_module:Runtime", "tests.policies:NoSuchRuntime", "tests.policies:push_left"):
        with pytest.raises(SpecError) as caught:
            load_runtime(bad)
        assert caught.value.field == "runtime" and not isinstance(caught.value, UnknownRuntime)


def test_entry_point_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "napping_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: napping-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nnapping = openrange_mesh.runtimes.sleep:SleepRuntime\n"
        "broken = tests.no_such_module:Runtime\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"napping", "broken"} <= set(known_runtimes())
    assert run("napping", {"seconds": 0})[0] == Outcome(True)
    with pytest.raises(RuntimeFailure, match="broken"):
        load_runtime("broken")
