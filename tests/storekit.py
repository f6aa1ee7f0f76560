"""Fixtures for the snapshot tests: every store backend by URL, and the S3 server's request log.

Import the fixtures into a test module (``from .storekit import any_store_url, s3_bucket,
s3_server``); each importing module starts its own moto server, once.

Counting requests: moto's server logs each request it answers, werkzeug-style, to the log file
``start_s3`` gives it (``"GET /bucket/key HTTP/1.1" 200``), as the response starts, so by the
time a client has a response its line is in the log. ``gets(server, key)`` counts those lines:
GETs counted at the server, not in our own code.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .s3kit import S3Server, start_s3, use_test_env


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = start_s3()
    with pytest.MonkeyPatch.context() as mp:
        use_test_env(mp)
        yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket(f"snap-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["path", "file", "memory", "s3"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind: a plain path, file://, memory:// and s3:// (moto)."""
    unique = f"t-{uuid.uuid4().hex[:12]}"
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path}/store"
    if request.param == "memory":
        return f"memory://{unique}"
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/{unique}?endpoint_url={server.endpoint_url}"


def s3_key(url: str, path: str) -> str:
    """``bucket/prefix/path`` of a store path, for ``requests``."""
    return f"{url.removeprefix('s3://').partition('?')[0]}/{path}"


def requests(server: S3Server, method: str, key: str) -> int:
    """How many ``method`` requests for exactly ``key`` (``bucket/prefix/path``) the server has
    answered so far, whatever their status."""
    line = re.compile(rf'"(?:\x1b\[[0-9;]*m)*{method} /{re.escape(key)} HTTP/1\.1')
    return sum(1 for text in server.log_path.read_text(errors="replace").splitlines() if line.search(text))
