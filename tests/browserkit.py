"""A page opened in headless Chromium (Playwright) that fails the test on any console error,
page error, dialog, or request to anything but ``file:`` and ``data:`` URLs.

Chromium is Debian's (/usr/bin/chromium) or OPENRANGE_CHROMIUM's; without it, or without
Playwright, the test skips with the reason, except under CI (tests/etcdkit.is_ci), where it fails:
a skipped browser test that reports green has tested nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .etcdkit import is_ci

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    path = os.environ.get("OPENRANGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        _unavailable(f"no Chromium at {path} (apt-get install chromium, or set OPENRANGE_CHROMIUM)")
    return path


def _unavailable(why: str) -> None:
    if is_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@contextlib.contextmanager
def open_page(path: Path, *, color_scheme: str = "light") -> Iterator[Any]:
    """``path`` opened from file://, loaded; checks what happened when the block ends."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    executable = chromium()
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        try:
            page = browser.new_page(color_scheme=color_scheme, viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on(
                "request",
                lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(f"request: {r.url}"),
            )
            page.goto(path.resolve().as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()
    assert not problems, problems
