"""Vendored files are the ones recorded in VENDOR.md, byte for byte."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import openrange_mesh.dashboard

VENDOR = Path(openrange_mesh.dashboard.__file__).parent / "static" / "vendor"


def test_vendored_files_match_their_recorded_sha256() -> None:
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", (VENDOR / "VENDOR.md").read_text(), re.M)
    assert {name for name, _ in rows} == {p.name for p in VENDOR.iterdir() if p.name != "VENDOR.md"}
    for name, digest in rows:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
