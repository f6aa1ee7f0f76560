"""Episode records as the CLI shows them: table cells and JSON objects (shared by ls, show, wait)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import EpisodeRecord, State
from ..model.views import host_of
from .common import ago, compact_json, short, span

STATE_STYLES = {
    State.PENDING: "yellow",
    State.RUNNING: "cyan",
    State.SUCCEEDED: "green",
    State.FAILED: "bold red",
    State.CANCELLED: "magenta",
    State.LOST: "red",
}
ERROR_WIDTH = 48


def state_style(row: Sequence[str]) -> dict[int, str]:
    """The colour of the STATE cell (column 1) of a table row."""
    try:
        return {1: STATE_STYLES[State(row[1])]}
    except (ValueError, IndexError):
        return {}


def duration_of(record: EpisodeRecord, now: float) -> float | None:
    """The current attempt's run time so far, or its whole run time once finished."""
    if record.started_at is None:
        return None
    return (record.finished_at or now) - record.started_at


def cells(record: EpisodeRecord, now: float, *, wide: bool = False) -> list[str]:
    row = [
        record.id,
        record.state.value,
        host_of(record) or "-",
        str(record.attempt),
        record.spec.runtime,
        ago(record.created_at, now),
        span(duration_of(record, now)),
        short(record.error, ERROR_WIDTH) or "-",
    ]
    if wide:
        labels = ",".join(f"{k}={v}" for k, v in sorted(record.spec.labels.items()))
        result = short(compact_json(record.result), 60) if record.result is not None else "-"
        row += [labels or "-", record.submitter or "-", result]
    return row


COLUMNS = ["ID", "STATE", "HOST", "ATTEMPT", "RUNTIME", "AGE", "DURATION", "ERROR"]
WIDE_COLUMNS = [*COLUMNS, "LABELS", "SUBMITTER", "RESULT"]


def timeline(record: EpisodeRecord) -> list[tuple[float, str]]:
    """What happened to the episode, in time order, as (epoch, sentence)."""
    events: list[tuple[float, str]] = [(record.created_at, f"submitted by {record.submitter or '?'}")]
    for attempt in record.history:
        events.append((attempt.started_at, f"attempt {attempt.n} started on {attempt.host}"))
        if attempt.finished_at is not None:
            why = f": {short(attempt.error, 80)}" if attempt.error else ""
            events.append((attempt.finished_at, f"attempt {attempt.n} ended {attempt.outcome or '?'}{why}"))
    ended = record.finished_at
    if record.state.is_terminal and ended and not any(a.finished_at == ended for a in record.history):
        why = f": {short(record.error, 80)}" if record.error else ""
        events.append((ended, f"{record.state.value}{why}"))
    if record.acked_at:
        events.append((record.acked_at, "result acknowledged"))
    return sorted(events, key=lambda item: item[0])
