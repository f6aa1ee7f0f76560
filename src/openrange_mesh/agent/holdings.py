"""The claims this host holds and what became of their episodes: ``Holdings``.

A claim won (agent/claimer.py) is held until every episode of it is committed
(agent/committer.py), dropped when a fenced commit finds its claim key gone, handed back at the
end of a drain, or let go with a lost lease. A worker's ``Done`` becomes a final record here and
waits for its claim's commit to be due (``COMMIT_LINGER``).

Threads: the loop thread only, so no lock. (The metrics server's thread reads ``running``: one
``len`` of a dict.) Nothing here talks to etcd or to the workers: the callers do, and tell
Holdings what came of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..ledger.claims import Claim, Settlement
from ..ledger.records import finish_attempt, release, spent_attempts
from ..model import EpisodeRecord, State
from ..worker.child import Done

# A batch's results are committed together when the batch ends, or once the oldest uncommitted
# one has waited this long: one txn per batch instead of one per finished episode. Each partial
# commit rewrites the whole group record, which the client and the dashboard then decode whole:
# at 50 ms a 250-episode CartPole batch (~0.1 s) took 2-3 commits, at 0.5 s it takes one, and
# the agent's, the client's and etcd's CPU per episode fell by a fifth to a third
# (design/performance.md). The price: a long batch's results show up to this much later.
COMMIT_LINGER = 0.5

_DONE_STATES = {"succeeded": State.SUCCEEDED, "failed": State.FAILED, "cancelled": State.CANCELLED}


@dataclass
class Held:
    """A claim this agent holds."""

    claim: Claim
    records: dict[str, EpisodeRecord]  # running records as claimed, by id
    finals: dict[str, EpisodeRecord] = field(default_factory=dict)  # finished, not yet committed
    first_final_at: float = 0.0  # monotonic time the oldest uncommitted final arrived

    def commit_due(self, now: float) -> bool:
        return bool(self.finals) and (
            len(self.finals) == len(self.records) or now - self.first_final_at >= COMMIT_LINGER
        )


class Holdings:
    def __init__(self) -> None:
        self._held: dict[str, Held] = {}  # claim id -> the claim
        self._owner_of: dict[str, str] = {}  # episode id -> claim id, for every episode held
        self._cancel_seen: set[str] = set()  # cancels forwarded to a worker: their commit deletes the marker
        self._claims_unsure = False  # a claim txn got no answer: it may hold episodes we do not know

    # --- what it holds -------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Episodes held (running, or finished and not yet committed)."""
        return len(self._owner_of)

    @property
    def has_claims(self) -> bool:
        return bool(self._held)

    @property
    def claims_unsure(self) -> bool:
        return self._claims_unsure

    def holds(self, claim_id: str) -> bool:
        return claim_id in self._held

    def owns(self, episode_id: str) -> bool:
        return episode_id in self._owner_of

    def claim(self, claim_id: str) -> Claim:
        return self._held[claim_id].claim

    def episodes_of(self, claim_id: str) -> list[str]:
        return list(self._held[claim_id].records)

    def record_of(self, episode_id: str) -> EpisodeRecord | None:
        claim_id = self._owner_of.get(episode_id)
        held = self._held.get(claim_id) if claim_id else None
        return held.records.get(episode_id) if held else None

    def next_commit_at(self) -> float | None:
        """When the next claim's commit falls due by waiting (monotonic), if any has results."""
        due = [h.first_final_at + COMMIT_LINGER for h in self._held.values() if h.finals]
        return min(due) if due else None

    # --- changes -------------------------------------------------------------------------

    def hold(self, claim: Claim, running: list[EpisodeRecord]) -> None:
        self._held[claim.claim_id] = Held(claim, {r.id: r for r in running})
        for record in running:
            self._owner_of[record.id] = claim.claim_id

    def claim_answer_lost(self) -> None:
        """A claim txn got no answer: it may have been applied (agent/claimer.py adopts)."""
        self._claims_unsure = True

    def claims_checked(self) -> None:
        self._claims_unsure = False

    def unrunnable(self, claim_id: str, now: float, reason: str) -> None:
        """A claim held that no worker could take, or will (we take no work): its episodes are
        released (back to the queue, no attempt spent) by its commit, due at once."""
        held = self._held[claim_id]
        if not held.finals:
            held.first_final_at = time.monotonic()
        for episode_id, record in held.records.items():
            if episode_id not in held.finals:
                held.finals[episode_id] = release(record, now, reason, held.claim.token)

    def cancel_forwarded(self, episode_ids: Iterable[str]) -> None:
        self._cancel_seen.update(episode_ids)

    def finished(self, done: Done, now: float) -> None:
        """A worker's result becomes the episode's final record, to commit with its claim.
        Ignored: a result of a claim no longer held, or of an attempt before the one held."""
        claim_id = self._owner_of.get(done.episode_id)
        held = self._held.get(claim_id) if claim_id else None
        if held is None or done.episode_id not in held.records:
            return  # a result from a claim we no longer hold
        record = held.records[done.episode_id]
        if done.attempt != record.attempt:
            return  # a cancelled earlier attempt, finishing after we claimed the episode again
        if not held.finals:
            held.first_final_at = time.monotonic()
        held.finals[done.episode_id] = _final(record, done, held.claim.token, done.episode_id in self._cancel_seen, now)

    def due(self, now: float, *, draining: bool) -> list[Settlement]:
        """The commits due now (``now`` monotonic): every result at once while draining."""
        return [
            Settlement(
                h.claim,
                list(h.finals.values()),
                len(h.finals) == len(h.records),
                frozenset(self._cancel_seen.intersection(h.finals)),
            )
            for h in self._held.values()
            if h.finals and (draining or h.commit_due(now))
        ]

    def settled(self, item: Settlement) -> None:
        """A commit of ``due`` landed: its episodes are done with (the claim too, if last)."""
        self._cancel_seen -= item.cancelled
        held = self._held[item.claim.claim_id]
        self._forget(held, [record.id for record in item.finals])
        if not held.records:
            del self._held[item.claim.claim_id]

    def resynced(self, claim_id: str, still_held: set[str]) -> bool:
        """After a fenced commit of a claim whose key still lives: forget its episodes that no
        longer run under it (``still_held`` are those that do). True when none is left: only
        the claim key remains to be deleted (then ``drop`` it)."""
        held = self._held[claim_id]
        self._forget(held, [i for i in held.records if i not in still_held])
        return not held.records

    def drop(self, claim_id: str) -> list[str]:
        """Let a claim go (its key is gone, or only its key was left); returns the episodes it
        still held, for the caller to stop."""
        held = self._held.pop(claim_id, None)
        if held is None:
            return []
        for episode_id in held.records:
            self._owner_of.pop(episode_id, None)
        self._cancel_seen.difference_update(held.records)  # not ours: a later claim of them starts clean
        return list(held.records)

    def hand_back(self, now: float, reason: str) -> list[Settlement]:
        """The end of a drain: for each claim, one last commit of its results and of everything
        else released back to the queue. Holdings keep them until ``clear``."""
        out: list[Settlement] = []
        for held in self._held.values():
            token = held.claim.token
            finals = [*held.finals.values()]
            finals += [release(r, now, reason, token) for i, r in held.records.items() if i not in held.finals]
            out.append(Settlement(held.claim, finals, True, frozenset(self._cancel_seen.intersection(held.records))))
        return out

    def clear(self) -> None:
        """Let every claim go (lease lost, or handed back): whatever a claim txn without an
        answer took went with the lease too."""
        self._held.clear()
        self._owner_of.clear()
        self._cancel_seen.clear()
        self._claims_unsure = False

    def _forget(self, held: Held, episode_ids: list[str]) -> None:
        for episode_id in episode_ids:
            del held.records[episode_id]
            held.finals.pop(episode_id, None)
            self._owner_of.pop(episode_id, None)
            self._cancel_seen.discard(episode_id)


def _final(record: EpisodeRecord, done: Done, token: int, cancel_seen: bool, now: float) -> EpisodeRecord:
    """The record a worker's result closes the attempt with; ``token`` (the claim's) is recorded
    in the attempt: the dashboard shows it."""
    if done.kind == "released" and cancel_seen:
        # its cancel was forwarded, and the commit deletes the marker: putting it back would
        # run a cancelled episode again (a worker that died before reporting the cancel)
        return finish_attempt(record, State.CANCELLED, now, "cancelled", None, token=token)
    if done.kind == "released":  # the host's failure, not the episode's (worker/pool.py, worker/child.py)
        return release(record, now, done.error or "released", token)
    spec = record.spec
    if done.kind == "timeout" and spec.on_timeout == "retry" and spent_attempts(record) < spec.max_attempts:
        state = State.PENDING  # a retry: attempt + 1, back in the queue
    else:
        state = _DONE_STATES.get(done.kind, State.FAILED)
    return finish_attempt(
        record,
        state,
        now,
        done.error,
        done.result,
        done.events,
        token=token,
        artifacts=done.artifacts,
        inline_events=done.inline_events,
    )
