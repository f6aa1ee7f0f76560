"""Policies the gymnasium runtime tests name by import path (``tests.policies:...``)."""

from __future__ import annotations

from typing import Any

NOT_CALLABLE = 42


def push_left(observation: Any, action_space: Any) -> int:
    return 0


def lean_with_pole(observation: Any, action_space: Any) -> int:
    """Push toward the side the pole leans to: deterministic, and it balances for a while."""
    return 1 if observation[2] + observation[3] > 0 else 0


def explode(observation: Any, action_space: Any) -> int:
    raise ValueError("policy exploded")
