"""A gymnasium env backed by a simulator process, as Unity, CARLA or MineRL envs are: the process
starts with the env and must live as long as it. Its id for specs: ``tests.sim_env:Sim-v0``,
with ``env_kwargs={"seconds": ...}`` naming the simulator (``sleep <seconds>``) for a test to
find it."""

from __future__ import annotations

import subprocess
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "OpenrangeTestSim-v0"


class SimEnv(gymnasium.Env[Any, Any]):
    def __init__(self, seconds: float = 600.0) -> None:
        self.sim = subprocess.Popen(["sleep", str(seconds)])
        self.observation_space = spaces.Box(0, 1, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        if self.sim.poll() is not None:
            raise RuntimeError("the simulator process is gone")
        self.steps = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        return np.zeros(1, np.float32), 1.0, self.steps >= 3, False, {}

    def close(self) -> None:
        self.sim.kill()
        self.sim.wait()


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=SimEnv)
