"""Fixtures for the snapshot tests: every store backend by URL, and the S3 server's request log.

The fixtures (``any_store_url``, ``s3_server``, ``s3_bucket``) live in conftest.py.

Counting requests: moto's server logs each request it answers, werkzeug-style, to the log file
``start_s3`` gives it (``"GET /bucket/key HTTP/1.1" 200``), as the response starts, so by the
time a client has a response its line is in the log. ``gets(server, key)`` counts those lines:
GETs counted at the server, not in our own code.
"""

from __future__ import annotations

import re

from .s3kit import S3Server


def s3_key(url: str, path: str) -> str:
    """``bucket/prefix/path`` of a store path, for ``requests``."""
    return f"{url.removeprefix('s3://').partition('?')[0]}/{path}"


def requests(server: S3Server, method: str, key: str) -> int:
    """How many ``method`` requests for exactly ``key`` (``bucket/prefix/path``) the server has
    answered so far, whatever their status."""
    line = re.compile(rf'"(?:\x1b\[[0-9;]*m)*{method} /{re.escape(key)} HTTP/1\.1')
    return sum(1 for text in server.log_path.read_text(errors="replace").splitlines() if line.search(text))
