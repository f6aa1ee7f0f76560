"""What every ``openrange-mesh`` command shares: the global options' object, opening the registry
and the store, the output option, parsing ``k=v``, and formatting times.

The CLI is a client: it opens the registry with a short ``retry_timeout`` (an unreachable etcd
fails in seconds, exit 3), takes no lease, and watches only for ``--watch``, ``-f`` and ``wait``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from .. import meshstore
from ..client.client import MeshClient
from ..config import (
    ENV_CACERT,
    ENV_CERT,
    ENV_ETCD,
    ENV_KEY,
    ENV_PASSWORD,
    ENV_RETRY_TIMEOUT,
    ENV_STORE,
    ENV_USER,
    ETCDCTL_ENDPOINTS,
    etcd_endpoints,
    registry_url,
)
from ..errors import ConfigError
from ..jsonfloats import named_floats
from ..keys import Keys
from ..ledger.catalog import Catalog
from ..registry import Registry, open_registry
from ..store import Store
from .safe import printable, safe_json

PROG = "openrange-mesh"
DEFAULT_RETRY_TIMEOUT = 5.0  # seconds one registry call may retry: a client should fail fast
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Mesh:
    """The global options, and the registry opened from them on first use (closed at exit)."""

    etcd: str | None
    namespace: str
    debug: bool
    access: Mapping[str, str | None] = field(default_factory=dict, repr=False)  # --cacert ... --password
    _registry: Registry | None = field(default=None, repr=False)
    _client: MeshClient | None = field(default=None, repr=False)

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def registry(self) -> Registry:
        if self._registry is None:
            if not etcd_endpoints(self.etcd):
                raise click.UsageError(f"no etcd endpoints: pass --etcd or set {ENV_ETCD} or {ETCDCTL_ENDPOINTS}")
            url = registry_url(self.etcd, self.access)
            self._registry = open_registry(url, retry_timeout=retry_timeout())
            click.get_current_context().call_on_close(self._registry.close)
        return self._registry

    def catalog(self) -> Catalog:
        return Catalog(self.registry(), self.keys)

    def store(self, url: str | None, *, required: bool = True) -> Store | None:
        """The store at ``--store`` if given, else the one the mesh recorded (meshstore.py);
        ``--store ""`` says none."""
        if url == "" and not required:
            return None
        store = meshstore.find(self.registry(), self.keys, url)
        if store is None and required:
            raise click.UsageError(
                "no store: the mesh has none recorded yet (no agent with --store has joined); "
                f"pass --store or set {ENV_STORE}"
            )
        return store

    def client(self) -> MeshClient:
        """A MeshClient on the shared registry. No backpressure: the CLI submits what it is given."""
        if self._client is None:
            self._client = MeshClient(self.registry(), namespace=self.namespace, max_in_flight=2**62)
        return self._client


pass_mesh = click.make_pass_decorator(Mesh)


def retry_timeout() -> float:
    raw = os.environ.get(ENV_RETRY_TIMEOUT, "")
    try:
        value = float(raw) if raw else DEFAULT_RETRY_TIMEOUT
    except ValueError as exc:
        raise ConfigError(f"bad {ENV_RETRY_TIMEOUT} {raw!r}: expected seconds") from exc
    if value <= 0:
        raise ConfigError(f"{ENV_RETRY_TIMEOUT} must be positive, not {raw!r}")
    return value


def etcd_options(f: F) -> F:
    """Where etcd is and how to reach it, named as etcdctl names them: ``--etcd`` (alias
    ``--endpoints``), ``--cacert``, ``--cert``, ``--key``, ``--user``, ``--password``. Each falls back to
    its ``OPENRANGE_*`` variable, then etcdctl's ``ETCDCTL_*`` (read by config, not click)."""
    options = [
        click.option(
            "--etcd",
            "--endpoints",
            "etcd",
            envvar=ENV_ETCD,
            metavar="ENDPOINTS",
            help=f"etcd endpoints: h1:2379,h2:2379, http(s)://h1:2379,..., or a registry URL (env {ENV_ETCD}, "
            f"else {ETCDCTL_ENDPOINTS}).",
        ),
        click.option("--cacert", metavar="PATH", help=f"CA bundle that signed etcd's certificate (env {ENV_CACERT})."),
        click.option("--cert", metavar="PATH", help=f"Client certificate for etcd (env {ENV_CERT})."),
        click.option("--key", metavar="PATH", help=f"Client certificate's key (env {ENV_KEY})."),
        click.option("--user", metavar="NAME[:PASSWORD]", help=f"etcd user (env {ENV_USER})."),
        click.option("--password", metavar="TEXT", help=f"etcd password; the env {ENV_PASSWORD} keeps it out of ps."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def store_option() -> Callable[[F], F]:
    """``--store URL`` (env OPENRANGE_STORE): where events and artifacts live; by default the
    store the mesh's agents recorded in etcd."""
    return click.option(
        "--store",
        "store_url",
        envvar=ENV_STORE,
        metavar="URL",
        help=f"Shared store: a path, file://, s3://bucket/prefix (env {ENV_STORE}); default: the mesh's own.",
    )


def output_option(*choices: str) -> Callable[[F], F]:
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="Output format.",
    )


# --- input --------------------------------------------------------------------------------------


def parse_pairs(values: Iterable[str], what: str, convert: Callable[[str], Any] = str) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: convert(v)}``; a pair without ``=`` is a usage error naming ``what``."""
    pairs: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: expected key=value", param_hint=what)
        pairs[key.strip()] = convert(value)
    return pairs


def json_or_string(text: str) -> Any:
    """A ``--param`` value: JSON when it parses (``3``, ``true``, ``[1,2]``), else the string itself.
    JSON nested too deep for the parser (~1000 levels) is a usage error, not a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise click.BadParameter(f"{short(text, 40)!r}: JSON nested too deep", param_hint="--param") from None


def read_ids(ids: Iterable[str]) -> list[str]:
    """Episode ids from arguments; ``-`` reads more, one per line, from stdin. Order kept, duplicates dropped."""
    out: list[str] = []
    for item in ids:
        out += _stdin_lines() if item == "-" else [item]
    return list(dict.fromkeys(out))


def _stdin_lines() -> list[str]:
    """Stdin's non-blank lines. Bytes that are not UTF-8 become U+FFFD: no id has them, so such
    a line is an unknown id (said as such), not a decoding crash."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    return [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]


# --- output -------------------------------------------------------------------------------------


def out_console() -> Console:
    """stdout through rich: colour only on a terminal, and never with NO_COLOR set. No markup,
    no emoji codes: text from episodes prints as written (``[red]``, ``:x:``); what else it
    holds goes through ``safe.printable`` first."""
    return Console(highlight=False, markup=False, emoji=False, soft_wrap=True)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def dump_json(value: Any) -> str:
    """Indented JSON, safe to print (``safe.safe_json``): the same JSON, controls escaped."""
    return safe_json(_dumps(value, indent=2))


def compact_json(value: Any) -> str:
    return safe_json(_dumps(value, separators=(",", ":")))


def _dumps(value: Any, **layout: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_jsonable, **layout)
    except ValueError:  # NaN or an infinity (an episode's result or event): JSON has no such numbers
        return json.dumps(named_floats(value), ensure_ascii=False, allow_nan=False, default=_jsonable, **layout)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):  # Mapping proxies and the like arrive here
        return value
    if hasattr(value, "items"):
        return dict(value.items())
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def short(text: str | None, width: int) -> str:
    """The first line of ``text``, cut to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: max(width - 1, 0)] + "…"


def span(seconds: float | None) -> str:
    """A duration for humans: ``850ms``, ``12s``, ``3m05s``, ``2h10m``, ``4d03h``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def stamp(epoch: float | None) -> str:
    """Local wall-clock time, to the millisecond; ``-`` for None."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="milliseconds")


def ago(epoch: float | None, now: float | None = None) -> str:
    if not epoch:
        return "-"
    return span((time.time() if now is None else now) - epoch)


# --- logging ------------------------------------------------------------------------------------


class _EchoHandler(logging.Handler):
    """Log records as ``openrange-mesh: warning: ...`` on whatever stderr is now (click's test
    runner swaps it per invocation, so a handler bound to one stream object would go stale)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = printable(self.format(record), lines=record.exc_info is not None)  # a traceback has lines
            click.echo(f"{PROG}: {record.levelname.lower()}: {text}", err=True)
        except Exception:  # logging must never take the command down
            self.handleError(record)


def _not_retry_noise(record: logging.LogRecord) -> bool:
    """The registry's "retrying" warnings: a one-shot command reports the final error instead."""
    return not (record.name.startswith("openrange_mesh.registry") and record.levelno < logging.ERROR)


def configure_logging(debug: bool) -> Callable[[], None]:
    """Echo our own loggers' records (not etcd3gw's or urllib3's): warnings, or everything with
    --debug. Returns the undo, so a command run inside another program (a test) leaves its
    logging as it found it."""
    logger = logging.getLogger("openrange_mesh")
    handler = _EchoHandler(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        handler.addFilter(_not_retry_noise)
    logger.addHandler(handler)
    level = logger.level
    if debug:
        logger.setLevel(logging.DEBUG)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return undo


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command: ``openrange-mesh: <message>`` on stderr (one line), exit status ``code``."""
    click.echo(f"{PROG}: {printable(message)}", err=True)
    raise click.exceptions.Exit(code)
