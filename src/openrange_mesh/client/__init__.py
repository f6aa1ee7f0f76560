"""The trainer's API: ``MeshClient`` submits, waits for, reads and cancels episodes (design §8)."""

from __future__ import annotations

from .client import MeshClient

__all__ = ["MeshClient"]
