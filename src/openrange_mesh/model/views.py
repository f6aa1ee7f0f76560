"""The JSON views of records: what ``-o json`` prints and what the dashboard's API answers (one
shape for both, documented in the README)."""

from __future__ import annotations

from typing import Any

from .host import HostInfo
from .record import EpisodeRecord


def host_of(record: EpisodeRecord) -> str | None:
    """Where it runs (its owner) or last ran."""
    return record.owner or (record.history[-1].host if record.history else None)


def summary(record: EpisodeRecord) -> dict[str, Any]:
    """The listing's JSON object for one record."""
    return {
        "id": record.id,
        "state": record.state.value,
        "host": host_of(record),
        "attempt": record.attempt,
        "runtime": record.spec.runtime,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "error": record.error,
        "labels": dict(record.spec.labels),
        "submitter": record.submitter,
        "result": record.result,
        "owner": record.owner,
        "acked_at": record.acked_at,
    }


def detail(record: EpisodeRecord) -> dict[str, Any]:
    """Everything in the record: the summary plus claim, spec and every attempt."""
    return {
        **summary(record),
        "claim": record.claim,
        "spec": record.spec.to_dict(),
        "history": [a.to_dict() for a in record.history],
    }


def host_summary(host: HostInfo, leader: str | None) -> dict[str, Any]:
    return {
        "id": host.id,
        "leader": host.id == leader,
        "capacity": host.capacity,
        "running": host.running,
        "labels": dict(host.labels),
        "version": host.version,
        "address": host.address,
        "started_at": host.started_at,
        "pid": host.pid,
        "machine": host.machine,
        "draining": host.draining,
        "reason": host.reason,
        "url": host.url,
    }
