"""The record transitions, as pure functions of a record: running, finished, given back,
released. The ledger writes what they return; nothing here talks to etcd."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..model import Attempt, EpisodeRecord, EpisodeSpec, State, unpack
from ..registry import KeyValue


def claim_episode_ids(kv: KeyValue) -> list[str]:
    """The episode ids a claim key lists (tolerant: a corrupt claim lists nothing)."""
    try:
        value = unpack(kv.value)
    except Exception:
        return []
    return [str(i) for i in value] if isinstance(value, list) else []


def held_by(record: EpisodeRecord, host: str, claim_id: str) -> bool:
    return record.state is State.RUNNING and record.owner == host and record.claim == claim_id


def start_attempt(record: EpisodeRecord, host: str, claim_id: str, now: float, batch: str | None) -> EpisodeRecord:
    return record.replace(
        state=State.RUNNING,
        owner=host,
        claim=claim_id,
        started_at=now,
        error=None,
        history=(*record.history, Attempt(record.attempt, host, now, batch=batch)),
    )


def created(ids: Sequence[str], specs: Sequence[EpisodeSpec], now: float, submitter: str) -> list[EpisodeRecord]:
    """Records of new episodes, not yet pending nor started."""
    return [EpisodeRecord(id=i, spec=s, created_at=now, submitter=submitter) for i, s in zip(ids, specs, strict=True)]


def start_together(records: Sequence[EpisodeRecord], host: str, now: float) -> tuple[str, list[EpisodeRecord]]:
    """Fresh records started at once by ``host`` under one claim (the single-host service's
    start): the claim's id (its first episode's id and attempt) and the running records, in
    one batch if they are several."""
    claim_id = f"{records[0].id}.{records[0].attempt}"
    batch = claim_id if len(records) > 1 else None
    return claim_id, [start_attempt(r, host, claim_id, now, batch) for r in records]


def finish_attempt(
    record: EpisodeRecord,
    state: State,
    now: float,
    error: str | None,
    result: dict[str, object] | None = None,
    events: str | None = None,
    *,
    outcome: str | None = None,
    token: int | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    inline_events: list[dict[str, Any]] | None = None,
) -> EpisodeRecord:
    """Close the current attempt (``events``: the shared file its events went to, if they did;
    ``token``: its claim's fencing token, where the closer knows it; ``artifacts``: what it
    uploaded under that token; ``inline_events``: its events, when few enough to keep in the
    record). A ``PENDING`` state means
    "retry": attempt + 1, back in the queue. ``outcome`` defaults to "retried" for a retry,
    else the state."""
    last = record.history[-1] if record.history else Attempt(record.attempt, record.owner or "?", now)
    outcome = outcome or ("retried" if state is State.PENDING else state.value)
    closed = Attempt(
        last.n,
        last.host,
        last.started_at,
        now,
        outcome,
        error,
        last.batch,
        events,
        token or last.token,
        artifacts or None,
        inline_events,
    )
    history = (*record.history[:-1], closed)
    if state is State.PENDING:
        return record.replace(
            state=State.PENDING,
            attempt=record.attempt + 1,
            owner=None,
            claim=None,
            started_at=None,
            error=error,
            history=history,
        )
    return record.replace(state=state, finished_at=now, error=error, result=result, claim=None, history=history)


def requeued(record: EpisodeRecord, now: float, reason: str, *, cancel: bool, token: int | None) -> EpisodeRecord:
    if cancel:
        return finish_attempt(record, State.CANCELLED, now, f"cancelled ({reason})", token=token)
    return give_back(record, now, reason, token=token)


def give_back(record: EpisodeRecord, now: float, reason: str, token: int | None = None) -> EpisodeRecord:
    """A running episode whose host died or lost its lease: back to pending, or lost once every
    attempt is spent. This spends an attempt: the episode may be what killed its host (memory,
    a kernel panic), and an episode that does so every time must end."""
    spent = spent_attempts(record)
    if spent >= record.spec.max_attempts:
        lost = f"{reason}; all {record.spec.max_attempts} attempts spent"
        return finish_attempt(record, State.LOST, now, lost, token=token)
    return finish_attempt(record, State.PENDING, now, reason, token=token)


RELEASED = "released"  # the outcome of an attempt the infrastructure ended: not counted
MAX_FREE_RELEASES = 20  # then releases count too, so a record's history stays bounded


def release(record: EpisodeRecord, now: float, reason: str, token: int | None = None) -> EpisodeRecord:
    """A running episode the infrastructure could not run or finish (its worker could not
    start or died before reporting it, its host's store failed, its host drained): back to
    pending without spending an attempt. The attempt number still moves on (each attempt has
    its own claim id and store directory); after ``MAX_FREE_RELEASES`` releases they count."""
    if sum(1 for a in record.history if a.outcome == RELEASED) >= MAX_FREE_RELEASES:
        return give_back(record, now, f"{reason} (released {MAX_FREE_RELEASES} times: now it counts)", token)
    return finish_attempt(record, State.PENDING, now, reason, outcome=RELEASED, token=token)


def spent_attempts(record: EpisodeRecord) -> int:
    """The attempts counted against ``max_attempts``, the current one included: all but the
    first ``MAX_FREE_RELEASES`` released ones."""
    released = sum(1 for a in record.history if a.outcome == RELEASED)
    return record.attempt - min(released, MAX_FREE_RELEASES)
