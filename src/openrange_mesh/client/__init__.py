"""The trainer's API: ``MeshClient`` submits, waits for, reads and cancels episodes (design/README.md, "Module map")."""

from __future__ import annotations

from .client import MeshClient

__all__ = ["MeshClient"]
