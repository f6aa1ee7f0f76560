"""Open the artifact store by URL. One implementation, ``FsspecStore``, serves every scheme:

* ``/abs/path``, ``rel/path`` or ``file:///abs/path``: a shared directory (local disk or NFS).
* ``memory://NAME``: fsspec's in-process memory filesystem, shared by every opener of NAME in
  this process (single host, tests); ``memory://`` opens a fresh private one.
* ``s3://bucket[/prefix][?endpoint_url=URL&region=R&profile=P]``: S3 or any S3-compatible
  endpoint. Credentials come from the usual AWS environment and config files, never the URL.
  Needs the s3 extra: ``pip install 'openrange-mesh[s3]'``.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ..errors import ConfigError
from .base import Store
from .fsspec_store import FsspecStore

__all__ = ["FsspecStore", "Store", "open_store"]

_KNOWN = "a path, file:///path, memory://[NAME] or s3://bucket[/prefix]"
_S3_OPTIONS = ("endpoint_url", "region", "profile")


def open_store(url: str) -> Store:
    """Open the store named by ``url`` (see the module docstring). Has no side effects except,
    for S3, one request checking the bucket exists (``StoreError`` if not)."""
    if not url:
        raise ConfigError(f"empty store URL: expected {_KNOWN}")
    if "://" not in url:
        return FsspecStore.local(os.path.abspath(os.path.expanduser(url)))
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and not parts.query:
        return FsspecStore.local(os.path.abspath(unquote(parts.path)))
    if parts.scheme == "memory" and not parts.query:
        return FsspecStore.memory(f"{parts.netloc}{parts.path}".strip("/"))
    if parts.scheme == "s3":
        return _open_s3(url)
    raise ConfigError(f"unsupported store URL {_safe(url)!r}: expected {_KNOWN}")


def _open_s3(url: str) -> Store:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError("credentials do not belong in an s3:// URL: use the AWS environment or config")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not bucket:
        raise ConfigError(f"store URL {_safe(url)!r} names no bucket: expected s3://bucket[/prefix]")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(f"bad prefix in store URL {_safe(url)!r}: no empty, '.' or '..' components")
    options = parse_qs(parts.query, keep_blank_values=True)
    for name, values in options.items():
        if name not in _S3_OPTIONS or len(values) != 1 or not values[0]:
            raise ConfigError(
                f"bad option {name!r} in store URL {_safe(url)!r}: known options are "
                f"{', '.join(_S3_OPTIONS)}, each at most once with a value"
            )
    given = {k: v[0] for k, v in options.items()}
    endpoint_url = given.get("endpoint_url")
    if endpoint_url and "@" in urlsplit(endpoint_url).netloc:
        raise ConfigError("credentials do not belong in endpoint_url: use the AWS environment or config")
    query = urlencode([(k, given[k]) for k in _S3_OPTIONS if k in given], safe=":/")
    canonical = f"s3://{bucket}/{prefix}".rstrip("/") + (f"?{query}" if query else "")
    region, profile = given.get("region"), given.get("profile")
    return FsspecStore.s3(bucket, prefix, canonical, endpoint_url=endpoint_url, region=region, profile=profile)


def _safe(url: str) -> str:
    """``url`` without anything before an '@' in its authority (credentials), for messages."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "://" in url else url
