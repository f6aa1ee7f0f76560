"""Prove a store works before trusting it: write, read back and delete one small object.

An agent runs this before it joins the mesh, and again while it is sick (``agent/health.py``) to
learn when its store works again. A bucket that does not exist, a permission denied, an
unreachable endpoint and an unwritable path all fail here, with the store's own one-line reason,
instead of in every worker at every episode (issue 11: one agent with a bad ``--store`` joined
normally and lost other people's episodes).
"""

from __future__ import annotations

import os
import uuid

from ..errors import StoreError
from .base import Store
from .layout import probe_path


def probe(store: Store) -> None:
    """Raise ``StoreError`` naming what failed (write, read or delete) unless a round trip works."""
    path = probe_path(os.getpid(), uuid.uuid4().hex)  # unique: many hosts probe one store at once
    data = uuid.uuid4().bytes
    store.put_bytes(path, data, durable=False)
    try:
        if store.get_bytes(path) != data:
            raise StoreError(f"store {store.location()} gave back other bytes than it was given at {path}")
    finally:
        store.delete(path)
