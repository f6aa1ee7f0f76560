"""Committing: finished episodes become final records, committed per claim (fenced), with the
next claim in the same txn when a worker frees; resync after a fenced commit; hand-back."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence

from ..errors import RegistryError
from ..ledger.homes import Versioned
from ..ledger.ledger import Claim, Settlement
from ..ledger.queue import QueueEntry
from ..ledger.records import finish_attempt, release, spent_attempts
from ..model import EpisodeRecord, State
from ..worker.child import Done
from .claiming import Claiming, summary
from .state import COMMIT_LINGER, Held

log = logging.getLogger(__name__)

_DONE_STATES = {"succeeded": State.SUCCEEDED, "failed": State.FAILED, "cancelled": State.CANCELLED}


class Committing(Claiming):
    def _step_results(self) -> str | None:
        now = time.time()
        while True:
            try:
                done = self.pool.results.get_nowait()
            except queue.Empty:
                break
            self._record_done(done, now)
        now_m = time.monotonic()
        due = [(c, h) for c, h in self._held.items() if h.finals and (h.commit_due(now_m) or self._draining)]
        if not due:
            return None
        settlements = [
            Settlement(
                h.claim,
                list(h.finals.values()),
                len(h.finals) == len(h.records),
                frozenset(self._cancel_seen.intersection(h.finals)),
            )
            for _, h in due
        ]
        pairs = self._pairable(sum(1 for s in settlements if s.last))
        committed = fenced = 0
        claimed: list[str] = []
        for chunk, entries in _txn_groups(settlements, pairs):
            oks, won = self._settle(chunk, entries)
            for item, ok in zip(chunk, oks, strict=True):
                if ok:
                    committed += len(item.finals)
                    self._settled(item)
                else:
                    self.metrics.stale_commits.inc()
                    fenced += self._resync(item.claim.claim_id, self._held[item.claim.claim_id])
            claimed += self._took(entries, won)

        lines = [
            f"committed {committed} episodes" if committed else "",
            f"claimed {summary(claimed)}" if claimed else "",
            f"fenced off: {fenced} results not committed (episodes were taken over)" if fenced else "",
        ]
        return "; ".join(line for line in lines if line) or None

    def _settle(
        self, chunk: list[Settlement], entries: list[tuple[QueueEntry, dict[str, Versioned]]]
    ) -> tuple[list[bool], list[tuple[Claim, list[EpisodeRecord]] | None]]:
        try:
            return self.ledger.settle(
                chunk, entries, host=self.host, lease=self.lease.lease, extra=self._host_refresh()
            )
        except RegistryError:
            if entries:
                self._claims_unsure = True  # the claim half may have been applied: look once etcd answers
            raise

    def _settled(self, item: Settlement) -> None:
        held = self._held[item.claim.claim_id]
        self._cancel_seen -= item.cancelled
        self._count_commit(True, item.finals)
        for record in item.finals:
            del held.records[record.id]
            held.finals.pop(record.id, None)
            self._owner_of.pop(record.id, None)
        if not held.records:
            del self._held[item.claim.claim_id]

    def _record_done(self, done: Done, now: float) -> None:
        claim_id = self._owner_of.get(done.episode_id)
        held = self._held.get(claim_id) if claim_id else None
        self.metrics.attempt_reported(done.kind)
        if held is None or done.episode_id not in held.records:
            return  # a result from a claim we no longer hold
        record = held.records[done.episode_id]
        if done.attempt != record.attempt:
            return  # a cancelled earlier attempt, finishing after we claimed the episode again
        token = held.claim.token  # recorded in the attempt: the dashboard shows it
        if done.kind == "released" and done.episode_id in self._cancel_seen:
            # its cancel was forwarded, and the commit deletes the marker: putting it back would
            # run a cancelled episode again (a worker that died before reporting the cancel)
            final = finish_attempt(record, State.CANCELLED, now, "cancelled", None, token=token)
        elif done.kind == "released":  # the host's failure, not the episode's (pool.py, worker.py)
            final = release(record, now, done.error or "released", token)
        elif (
            done.kind == "timeout"
            and record.spec.on_timeout == "retry"
            and spent_attempts(record) < record.spec.max_attempts
        ):
            final = finish_attempt(record, State.PENDING, now, done.error, done.result, done.events, token=token)
        else:
            state = _DONE_STATES.get(done.kind, State.FAILED)
            final = finish_attempt(record, state, now, done.error, done.result, done.events, token=token)
        if not held.finals:
            held.first_final_at = time.monotonic()
        held.finals[done.episode_id] = final

    def _resync(self, claim_id: str, held: Held) -> int:
        """A commit was fenced off. If our claim key is gone, so is the claim: drop it and stop
        its episodes (returns how many). If it still lives, nobody else can have moved its
        episodes (requeues need the key gone): an earlier commit of ours landed without our
        hearing back, or someone rewrote a group of ours (an ack of a finished member). Forget
        the episodes no longer running under the claim, keep the rest (with the groups as
        they are now) for the next pass."""
        kv, _ = self.registry.get(self.keys.claim(self.host, claim_id))
        if kv is None or kv.create_revision != held.claim.token:
            self._drop_claim(claim_id)
            return len(held.records)
        ours = self.ledger.still_held(held.claim, list(held.records))
        for episode_id in list(held.records):
            if episode_id not in ours:
                del held.records[episode_id]
                held.finals.pop(episode_id, None)
                self._owner_of.pop(episode_id, None)
        if not held.records:  # all committed: only the claim key is left to go
            self.ledger.commit(held.claim, [], last=True)
            del self._held[claim_id]
        return 0

    def _drop_claim(self, claim_id: str) -> None:
        held = self._held.pop(claim_id, None)
        if held is None:
            return
        for episode_id in held.records:
            self._owner_of.pop(episode_id, None)
            self.pool.cancel(episode_id)

    def _hand_back(self) -> None:
        """End of a drain: stop what still runs and put it back in the queue in one txn per claim."""
        if self._held:
            self.pool.reset()
        now = time.time()
        for held in list(self._held.values()):
            finals = [*held.finals.values()]
            finals += [
                release(r, now, f"released by draining host {self.host}", held.claim.token)
                for i, r in held.records.items()
                if i not in held.finals
            ]
            try:
                landed = self.ledger.commit(
                    held.claim, finals, last=True, cancelled=self._cancel_seen.intersection(held.records)
                )
                self._count_commit(landed, finals)
            except RegistryError as exc:
                log.warning("could not hand back claim %s (%s); its lease expiry will", held.claim.claim_id, exc)
        log.info("drained: handed back %d claims", len(self._held))
        self._held.clear()
        self._owner_of.clear()

    def _count_commit(self, landed: bool, finals: Sequence[EpisodeRecord]) -> None:
        if not landed:
            self.metrics.stale_commits.inc()
            return
        self.metrics.commits.inc()
        for record in finals:
            self.metrics.attempt_committed(record)

    def _wait_time(self) -> float:
        due = [h.first_final_at + COMMIT_LINGER for h in self._held.values() if h.finals]
        steal_at = self._steal_at() if self._steal_wanted and self.pool.idle() else None
        if steal_at is not None:
            due.append(steal_at)
        if not due:
            return self.settings.loop_wait
        return max(0.0, min(self.settings.loop_wait, min(due) - time.monotonic()))


def _txn_groups(
    settlements: list[Settlement], pairs: list[tuple[QueueEntry, dict[str, Versioned]]]
) -> list[tuple[list[Settlement], list[tuple[QueueEntry, dict[str, Versioned]]]]]:
    """Pack settlements, and an entry to claim for each one that frees a worker, into settle
    calls of at most ``REQUEST_OPS`` ops of up to ~0.5 KB, which keeps a request well under
    etcd's 1.5 MiB (an entry's claim costs 3 and one per episode, as ``Settlement.size`` counts
    a commit). ``Ledger.settle`` splits a call further where etcd's ops limit needs it."""
    groups: list[tuple[list[Settlement], list[tuple[QueueEntry, dict[str, Versioned]]]]] = []
    budget = 0
    for item in settlements:
        entry = pairs.pop() if item.last and pairs else None
        cost = item.size + (3 + len(entry[0].ids) if entry else 0)
        if not groups or budget + cost > REQUEST_OPS:
            groups.append(([], []))
            budget = 0
        groups[-1][0].append(item)
        if entry:
            groups[-1][1].append(entry)
        budget += cost
    return groups


REQUEST_OPS = 1000  # ops of all the nested txns of one settle call (~0.5 KB each at most)
