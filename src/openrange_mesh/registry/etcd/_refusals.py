"""What etcd's answer means when the connection held: its message, as the JSON gateway passes it
on, turned into the ``errors`` class a caller acts on (a request too large, a lost lease, a full
etcd, a compacted revision, an authentication problem), or ``_Unreachable`` for a member that
cannot serve now (tried again, elsewhere if it can be)."""

from __future__ import annotations

import re
from collections.abc import Callable

from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError

from ...errors import Compacted, LeaseLost, RegistryError, RegistryFull, TooLarge
from ..base import MAX_REQUEST_BYTES
from ._transport import _NOT_APPLIED, _UNAVAILABLE, _Ctx, _error_message, _InvalidToken, _Unreachable


def refusal(
    exc: BaseException, ctx: _Ctx, *, endpoints: str, where: str, user: str | None, oldest: Callable[[], int]
) -> RegistryError:
    """``exc`` as the errors class it means; ``oldest``: the compaction revision, asked only
    when the answer is that the revision was compacted."""
    message = _error_message(exc)
    lowered = message.lower()
    if "request is too large" in lowered:
        return TooLarge(ctx.what, ctx.size, MAX_REQUEST_BYTES)
    if "larger than max" in lowered:  # gRPC's own limit: "... larger than max (3072010 vs. 2097152)"
        numbers = [int(n) for n in re.findall(r"\d+", message)]
        size, limit = numbers[-2:] if len(numbers) >= 2 else (ctx.size, MAX_REQUEST_BYTES)
        return TooLarge(ctx.what, size, limit)
    if "requested lease not found" in lowered:
        return LeaseLost(ctx.lease)
    if "database space exceeded" in lowered:
        return RegistryFull(ctx.what)
    if "required revision has been compacted" in lowered:
        return Compacted(ctx.revision, oldest())
    if user is not None and ("invalid auth token" in lowered or "user name is empty" in lowered):
        return _InvalidToken(message)  # expired, or auth was enabled after we last authenticated
    if user is None and ("user name is empty" in lowered or "permission denied" in lowered):
        return RegistryError(f"etcd at {endpoints} requires authentication: add user:password@ to the URL")
    if "authentication failed" in lowered:
        return RegistryError(f"etcd authentication failed for user {user!r}: wrong user name or password")
    if "permission denied" in lowered:
        return RegistryError(f"etcd user {user!r} may not {ctx.what}: permission denied")
    if isinstance(exc, ConnectionFailedError | ConnectionTimeoutError) or any(s in lowered for s in _UNAVAILABLE):
        applied = not any(s in lowered for s in _NOT_APPLIED)
        return _Unreachable(
            endpoints, where, f"{where}: {message}", maybe_applied=applied, timed_out="timed out" in lowered
        )
    return RegistryError(f"etcd refused {ctx.what}: {message}")
