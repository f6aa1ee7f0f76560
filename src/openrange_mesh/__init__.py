"""openrange-mesh: run reinforcement-learning episodes across many hosts, coordinated through etcd."""

from __future__ import annotations

__version__ = "0.1.0"
