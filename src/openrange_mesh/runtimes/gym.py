"""The ``gymnasium`` runtime: one episode of a registered env, stepped in-process by a policy.

Params: ``env`` (an id, required; ``"module:Env-v0"`` imports ``module`` first, as gymnasium does),
``policy`` (``"random"``, the default: ``action_space.sample()`` on a space seeded with the episode
seed; or ``"pkg.mod:callable"``, called as ``policy(observation, action_space) -> action``),
``max_steps`` (int > 0: truncate there), ``env_kwargs`` (passed to the env), ``record_steps``
(emit one ``"step"`` event per step; off by default because an event costs more than a step).

Per-episode cost is kept near gymnasium's own: env specs and policies are resolved once per
process, the params last parsed are kept for the next episode that has the same, the random
policy samples its space directly, gymnasium's passive env checker runs on the first env of
each id only, and an env is made once per process and kept between episodes
(``reset(seed=...)`` starts each afresh, as a user's rollout worker keeps its env): making a
CartPole env costs more than running an episode of it. An episode that raised closes its env
instead: its state is not trusted again, and a worker about to kill the processes an episode
left closes every kept env first (``release_kept``): an env may run a simulator process, which
that sweep would kill under it. A checkpoint is the pickled env, wrappers included (so
TimeLimit's count survives), plus our counters; envs that do not pickle (a render window, a
simulator handle) raise RuntimeFailure.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from ..errors import RuntimeFailure, SpecError
from ..model.wire import pack
from . import _params
from .base import EventsAndOutcome, Outcome, new_event

log = logging.getLogger(__name__)

Policy = Callable[[Any, Any], Any]

_PARAMS = ("env", "policy", "max_steps", "env_kwargs", "record_steps")
_CHECKPOINT_VERSION = 1


def _random_policy(observation: Any, action_space: Any) -> Any:
    return action_space.sample()


_policies: dict[str, Policy] = {"random": _random_policy}
_checked_env_ids: set[str] = set()
# Envs between episodes, by (id, kwargs): a worker runs one episode at a time, a single-host
# service up to 60 at once; more than that idle are closed.
_idle: dict[tuple[str, str], list[Any]] = {}
IDLE_ENVS = 64


@dataclass(frozen=True)
class GymParams:
    env: str
    policy: str
    max_steps: int | None
    env_kwargs: dict[str, Any]
    record_steps: bool

    @functools.cached_property
    def pool_key(self) -> tuple[str, str]:
        """Which idle envs an episode of these params may take over: same id, same kwargs."""
        return self.env, repr(sorted(self.env_kwargs.items()))


def parse_params(params: Mapping[str, Any]) -> GymParams:
    _params.check_keys(params, allowed=_PARAMS, required=("env",))
    env_id = _params.get_str(params, "env")
    assert env_id is not None  # required above
    _env_spec(env_id)
    policy = _params.get_str(params, "policy") or "random"
    _policy(policy)
    return GymParams(
        env=env_id,
        policy=policy,
        max_steps=_params.get_int(params, "max_steps", minimum=1),
        env_kwargs=_params.get_dict(params, "env_kwargs"),
        record_steps=_params.get_bool(params, "record_steps", False),
    )


@functools.lru_cache(maxsize=256)
def _env_spec(env_id: str) -> Any:
    module, sep, name = env_id.rpartition(":")
    if sep:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise SpecError(_params.field("env"), f"cannot import {module!r}: {exc}") from exc
    try:
        return gymnasium.spec(name)
    except gymnasium.error.Error as exc:
        raise SpecError(_params.field("env"), f"unknown gymnasium env {env_id!r}: {exc}") from exc


def _policy(path: str) -> Policy:
    policy = _policies.get(path)
    if policy is None:
        policy = _params.import_object(path, _params.field("policy"))
        if not callable(policy):
            raise SpecError(_params.field("policy"), f"{path!r} is not callable")
        _policies[path] = policy
    return policy


def _make(p: GymParams) -> Any:
    # The passive checker inspects an env's first reset and step; once per id is enough to catch a
    # broken env, and skipping it afterwards saves about a quarter of a CartPole episode.
    skip_checker = True if p.env in _checked_env_ids else None
    try:
        env = gymnasium.make(_env_spec(p.env), disable_env_checker=skip_checker, **p.env_kwargs)
    except Exception as exc:
        raise RuntimeFailure(f"gymnasium.make({p.env!r}) failed: {type(exc).__name__}: {exc}") from exc
    _checked_env_ids.add(p.env)
    return env


class GymnasiumRuntime:
    name = "gymnasium"

    def validate(self, params: Mapping[str, Any]) -> None:
        parse_params(params)

    def release_kept(self) -> None:
        """Close the envs kept between episodes: a worker is about to kill the processes its
        episodes left, and a kept env's simulator process would die under it."""
        kept = [env for envs in _idle.values() for env in envs]
        _idle.clear()
        for env in kept:
            try:
                env.close()
            except Exception:  # closing is best effort: the sweep that follows kills what it left
                log.warning("%s: closing a kept env failed", type(env).__name__, exc_info=True)

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None) -> GymnasiumHandle:
        p = _parsed(params)
        env = _decode(snapshot, p.env)["env"] if snapshot is not None else _reuse(p) or _make(p)
        return GymnasiumHandle(p, env, _policy(p.policy), seed, snapshot)


# The params last parsed, by their packed bytes: a batch's episodes mostly share theirs (equal
# maps, not one object), and packing a small map costs an eighth of parsing it again. Bytes, not
# ==, tell 1 from 1.0 and True, and NaN from None, which parse differently (JSON would not).
_last_parsed: tuple[bytes, GymParams] | None = None


def _parsed(params: Mapping[str, Any]) -> GymParams:
    global _last_parsed
    try:
        key = pack(params)
    except (TypeError, ValueError, OverflowError):  # parse_params says what is wrong with it
        return parse_params(params)
    last = _last_parsed  # read once: a single-host service realizes from many threads
    if last is not None and last[0] == key:
        return last[1]
    p = parse_params(params)
    _last_parsed = (key, p)
    return p


def _reuse(p: GymParams) -> Any:
    idle = _idle.get(p.pool_key)
    return idle.pop() if idle else None


def _keep(p: GymParams, env: Any) -> None:
    """An env whose episode ended without raising, for the next episode of its kind."""
    idle = _idle.setdefault(p.pool_key, [])
    if len(idle) < IDLE_ENVS:
        idle.append(env)
    else:
        env.close()


class GymnasiumHandle(EventsAndOutcome):
    supports_checkpoint = True

    def __init__(self, p: GymParams, env: Any, policy: Policy, seed: int | None, snapshot: bytes | None) -> None:
        self._p = p
        self._env = env
        self._policy = policy
        self._seed = seed
        self._snapshot = snapshot
        self._events: list[dict[str, Any]] = []
        self._obs: Any = None
        self._steps = 0
        self._return = 0.0
        self._terminated = self._truncated = False
        self._outcome: Outcome | None = None
        self._started = self._stopped = False
        self._raised = False  # the env raised: closed at stop, never kept for another episode

    def reset(self) -> None:
        self._check_usable()
        if self._snapshot is not None:
            self.restore(self._snapshot)
        else:
            try:
                self._obs, _ = self._env.reset(seed=self._seed)
                self._env.action_space.seed(self._seed)
            except Exception as exc:
                self._raised = True
                raise RuntimeFailure(f"{self._p.env}: reset failed: {type(exc).__name__}: {exc}") from exc
            self._steps, self._return = 0, 0.0
            self._terminated = self._truncated = False
            self._outcome = None
            self._started = True
        self._events.append(new_event("reset", seed=self._seed, snapshot=self._snapshot is not None))

    def surface(self) -> dict[str, Any]:
        return {
            "env": self._p.env,
            "observation_space": describe_space(self._env.observation_space),
            "action_space": describe_space(self._env.action_space),
        }

    def advance(self, max_seconds: float) -> None:
        self._check_usable()
        if not self._started:
            raise RuntimeFailure("advance() before reset()")
        if self._outcome is not None:
            return
        step, policy, space = self._env.step, self._policy, self._env.action_space
        # the random policy's sample called directly: a Python call less per step (~5% of a
        # CartPole step)
        sample = space.sample if policy is _random_policy else None
        record, limit = self._p.record_steps, self._p.max_steps or -1
        obs, steps, ret = self._obs, self._steps, self._return
        terminated = truncated = False
        deadline = time.monotonic() + max_seconds
        error = None
        try:
            while True:
                action = sample() if sample is not None else policy(obs, space)
                obs, reward, terminated, truncated, _ = step(action)
                steps += 1
                ret += float(reward)
                if record:
                    self._events.append(new_event("step", step=steps, action=_jsonable(action), reward=float(reward)))
                if terminated or truncated or steps == limit or time.monotonic() >= deadline:
                    break
        except Exception as exc:
            log.warning("%s: episode failed at step %d", self._p.env, steps + 1, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            self._raised = True
        self._obs, self._steps, self._return = obs, steps, ret
        self._terminated, self._truncated = bool(terminated), bool(truncated) or steps == limit
        if error is not None:
            self._finish(Outcome(False, error))
        elif self._terminated or self._truncated:
            self._finish(Outcome(True))

    def checkpoint(self) -> bytes:
        self._check_usable()
        if not self._started:
            raise RuntimeFailure("checkpoint() before reset()")
        outcome = None if self._outcome is None else (self._outcome.succeeded, self._outcome.error)
        state = {
            "v": _CHECKPOINT_VERSION,
            "env_id": self._p.env,
            "env": self._env,
            "obs": self._obs,
            "counters": (self._steps, self._return, self._terminated, self._truncated),
            "outcome": outcome,
        }
        try:
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise RuntimeFailure(f"{self._p.env}: this env cannot be checkpointed: {exc}") from exc

    def restore(self, data: bytes) -> None:
        self._check_usable()
        state = _decode(data, self._p.env)
        if state["env"] is not self._env:
            self._env.close()
        self._env, self._obs = state["env"], state["obs"]
        self._steps, self._return, self._terminated, self._truncated = state["counters"]
        self._outcome = None if state["outcome"] is None else Outcome(*state["outcome"])
        self._started = True

    def collect(self) -> dict[str, Any]:
        return {
            "return": self._return,
            "steps": self._steps,
            "terminated": self._terminated,
            "truncated": self._truncated,
        }

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            if self._raised:
                self._env.close()
            else:
                _keep(self._p, self._env)

    def _finish(self, outcome: Outcome) -> None:
        self._outcome = outcome
        self._events.append(new_event("terminal", succeeded=outcome.succeeded, error=outcome.error, **self.collect()))

    def _check_usable(self) -> None:
        if self._stopped:
            raise RuntimeFailure(f"{self._p.env}: handle is stopped")


def _decode(data: bytes, env_id: str) -> dict[str, Any]:
    # Snapshots come from our own agents through the shared store: pickle is trusted here.
    try:
        state = pickle.loads(data)
    except Exception as exc:
        raise RuntimeFailure(f"not a gymnasium checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("v") != _CHECKPOINT_VERSION:
        raise RuntimeFailure("not a gymnasium checkpoint, or one from a newer version")
    if state["env_id"] != env_id:
        raise RuntimeFailure(f"checkpoint is of env {state['env_id']!r}, not {env_id!r}")
    return state


def describe_space(space: Any) -> dict[str, Any]:
    """A JSON-able description of a gymnasium space (non-finite bounds as "inf"/"-inf")."""
    kind = type(space).__name__
    if isinstance(space, spaces.Discrete):
        return {"type": kind, "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        shape, dtype = list(space.shape), str(space.dtype)
        return {
            "type": kind,
            "shape": shape,
            "dtype": dtype,
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": kind, "nvec": space.nvec.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": kind, "n": _jsonable(space.n)}
    if isinstance(space, spaces.Dict):
        return {"type": kind, "spaces": {k: describe_space(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": kind, "spaces": [describe_space(s) for s in space.spaces]}
    return {"type": kind, "repr": str(space)}


def _bound(values: Any) -> Any:
    """One number when every element is equal, a list for small arrays, else None."""
    flat = np.asarray(values).ravel()
    if flat.size and bool((flat == flat[0]).all()):
        return _number(flat[0])
    return [_number(x) for x in flat] if flat.size <= 64 else None


def _number(x: Any) -> Any:
    value = x.item()
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value.tolist() if hasattr(value, "tolist") else value
