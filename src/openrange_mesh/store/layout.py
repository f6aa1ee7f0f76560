"""Where everything lives in the store. Every path is built here, by a one-line function;
no store path is formatted anywhere else::

    cas/sha256/<first 2 hex>/<64 hex>                a snapshot by content (store/cas.py), written
                                                     once, never changed; 256 fan-out directories
                                                     keep a directory store's listings short
    episodes/<episode_id>/attempt-<n>/events-<chunk:06d>.jsonl
    episodes/<episode_id>/attempt-<n>/result.json
    episodes/<episode_id>/attempt-<n>/artifacts-<token>/<name>   what the attempt's runtime wrote
                                                     (name: a/b allowed), under its fencing token
    batches/<claim_id>/events-<chunk:06d>.jsonl      events of a batch claim's episodes, tagged
                                                     with "episode" and "attempt"
    shared/<name>.jsonl                              events of short single episodes one worker
                                                     ran, tagged alike; named after the first
                                                     (``<episode id>.<attempt>``)
    probes/<pid>-<random>                            an agent's start check (store/probe.py),
                                                     deleted at once
    meshes/<namespace>/<marker>                      the marker that makes this store the mesh's
                                                     (meshstore.py)
"""

from __future__ import annotations

import re

from ..errors import StoreError
from .digest import hex_of

_CAS = re.compile(r"cas/sha256/(?P<fan>[0-9a-f]{2})/(?P<hex>[0-9a-f]{64})")
_EVENTS = re.compile(r"episodes/(?P<episode>[^/]+)/attempt-(?P<attempt>\d+)/events-(?P<chunk>\d{6,})\.jsonl")


def episode_prefix(episode_id: str) -> str:
    return f"episodes/{_component('episode id', episode_id)}/"


def attempt_prefix(episode_id: str, attempt: int) -> str:
    return f"{episode_prefix(episode_id)}attempt-{_number('attempt', attempt)}/"


def events_path(episode_id: str, attempt: int, chunk: int) -> str:
    return f"{attempt_prefix(episode_id, attempt)}events-{_number('chunk', chunk):06d}.jsonl"


def batch_prefix(claim_id: str) -> str:
    return f"batches/{_component('claim id', claim_id)}/"


def batch_events_path(claim_id: str, chunk: int) -> str:
    return f"{batch_prefix(claim_id)}events-{_number('chunk', chunk):06d}.jsonl"


def shared_events_path(name: str) -> str:
    return f"shared/{_component('shared events name', name)}.jsonl"


def result_path(episode_id: str, attempt: int) -> str:
    return f"{attempt_prefix(episode_id, attempt)}result.json"


def mesh_marker_path(namespace: str, marker: str) -> str:
    """An object that says this store is the mesh's (meshstore.py): one per marker, so agents
    that race to be first never overwrite each other's."""
    return f"meshes/{_component('namespace', namespace)}/{_component('marker', marker)}"


def artifacts_prefix(episode_id: str, attempt: int, token: int) -> str:
    """Where an attempt's artifacts go, named by its claim's fencing token: a stale owner's
    late uploads land under its own token, which no committed record names."""
    return f"{attempt_prefix(episode_id, attempt)}artifacts-{_number('token', token)}/"


def artifact_path(episode_id: str, attempt: int, token: int, name: str) -> str:
    """``name`` may name a file in a folder (``videos/ep.mp4``): each part is checked."""
    parts = name.split("/")
    return artifacts_prefix(episode_id, attempt, token) + "/".join(_component("artifact name", p) for p in parts)


def cas_prefix() -> str:
    return "cas/sha256/"


def cas_path(digest: str) -> str:
    """Where the blob of ``digest`` (``sha256:<64 hex>``; ``InvalidDigest`` otherwise) lives."""
    hex_digest = hex_of(digest)
    return f"{cas_prefix()}{hex_digest[:2]}/{hex_digest}"


def parse_cas_path(path: str) -> str | None:
    """The digest whose blob is at ``path``, if ``cas_path`` built it, else None."""
    m = _CAS.fullmatch(path)
    return f"sha256:{m['hex']}" if m and m["hex"].startswith(m["fan"]) else None


def component_problem(value: object) -> str | None:
    """What makes ``value`` unsafe as one path component, or None. Submit checks a spec's
    snapshot ref with it (``specs.check_spec``), so a ref the store would refuse fails there,
    not on an agent. Refs are not nested (``a/b``): one component cannot climb out of
    ``snapshots/`` whatever the store, and content-addressed snapshots need no directories."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    # printable first: a lone surrogate does not encode, and a name with terminal escapes in
    # it would be echoed raw by anything that lists the store
    if not value.isprintable() or value in ("", ".", "..") or len(value.encode()) > 255:
        return "must be 1-255 bytes of printable characters, not '.' or '..'"
    if "/" in value or "\\" in value:
        return "must be one name, with no '/' or '\\'"
    return None


def parse_events_path(path: str) -> tuple[str, int, int] | None:
    """``(episode_id, attempt, chunk)`` for a path ``events_path`` built, else None."""
    m = _EVENTS.fullmatch(path)
    return (m["episode"], int(m["attempt"]), int(m["chunk"])) if m else None


def _component(what: str, value: str) -> str:
    """``value`` if it is safe as one path component, else ``StoreError``."""
    problem = component_problem(value)
    if problem is not None:
        raise StoreError(f"invalid {what} {value!r}: {problem}")
    return value


def _number(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreError(f"invalid {what} {value!r}: want an integer >= 0")
    return value


def probe_path(pid: int, nonce: str) -> str:
    return f"probes/{pid}-{nonce}"
