"""Committing: ``Committer`` turns workers' results into commits per claim (fenced), with the
next claim in the same txn when a worker frees; resyncs after a fenced commit; hands back what
still runs at the end of a drain.

Threads: the loop thread only. No state of its own: the results wait in Holdings
(agent/holdings.py), which it tells what etcd made of them.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence

from ..errors import RegistryError
from ..keys import Keys
from ..ledger.claims import Settlement
from ..ledger.ledger import Ledger
from ..model import EpisodeRecord
from ..registry import Registry
from ..worker.pool import Pool
from .claimer import Candidate, Claimer, summary
from .holdings import Holdings
from .metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_OPS = 1000  # ops of all the nested txns of one settle call (~0.5 KB each at most)
HAND_BACK_TRIES = 3  # commits a drain's hand-back makes of a claim that etcd refuses while its key lives


class Committer:
    def __init__(
        self,
        claimer: Claimer,
        holdings: Holdings,
        pool: Pool,
        ledger: Ledger,
        metrics: Metrics,
        *,
        host: str,
        registry: Registry,
        keys: Keys,
        draining: Callable[[], bool],
    ) -> None:
        self.claimer = claimer  # settles our commits with claims for the workers they free
        self.holdings = holdings
        self.pool = pool
        self.ledger = ledger
        self.metrics = metrics
        self.host = host
        self.registry = registry
        self.keys = keys
        self._draining = draining  # commit every result at once

    def step(self) -> str | None:
        self._take_results()
        settlements = self.holdings.due(time.monotonic(), draining=self._draining())
        if not settlements:
            return None
        pairs = self.claimer.pairable(sum(1 for s in settlements if s.last))
        committed = fenced = 0
        claimed: list[str] = []
        for chunk, entries in _txn_groups(settlements, pairs):
            oks, won = self.claimer.settle(chunk, entries)
            for item, ok in zip(chunk, oks, strict=True):
                if ok:
                    committed += len(item.finals)
                    self._count_commit(True, item.finals)
                    self.holdings.settled(item)
                else:
                    self.metrics.stale_commits.inc()
                    fenced += self._resync(item.claim.claim_id)
            claimed += self.claimer.took(entries, won)

        lines = [
            f"committed {committed} episodes" if committed else "",
            f"claimed {summary(claimed)}" if claimed else "",
            f"fenced off: {fenced} results not committed (episodes were taken over)" if fenced else "",
        ]
        return "; ".join(line for line in lines if line) or None

    def hand_back(self) -> None:
        """End of a drain: stop what still runs and put it back in the queue in one txn per claim.
        A commit refused while our claim key lives (someone rewrote a group of ours: a client's
        ack of a finished member) is resynced as ``step`` resyncs one, and made again with what
        still runs under the claim, up to ``HAND_BACK_TRIES`` times: left to our lease's end, the
        rest would be requeued as lost, an attempt spent for episodes a drain released."""
        if self.holdings.has_claims:
            self.pool.reset()
        reason = f"released by draining host {self.host}"
        handed = 0
        for _ in range(HAND_BACK_TRIES):
            for item in self.holdings.hand_back(time.time(), reason):
                claim_id = item.claim.claim_id
                try:
                    landed = self.ledger.commit(item.claim, item.finals, last=True, cancelled=item.cancelled)
                    self._count_commit(landed, item.finals)
                    if landed:
                        self.holdings.settled(item)
                        handed += 1
                    else:
                        self._resync(claim_id)  # taken over: dropped; else kept, its groups as they are now
                except RegistryError as exc:
                    log.warning("could not hand back claim %s (%s); its lease expiry will", claim_id, exc)
                    self.holdings.drop(claim_id)  # not asked again: each try may wait retry_timeout
        if self.holdings.has_claims:
            log.warning(
                "could not hand back %d episodes: refused %d times; their lease expiry will",
                self.holdings.running,
                HAND_BACK_TRIES,
            )
        log.info("drained: handed back %d claims", handed)
        self.holdings.clear()

    def _take_results(self) -> None:
        now = time.time()
        while True:
            try:
                done = self.pool.results.get_nowait()
            except queue.Empty:
                return
            self.metrics.attempt_reported(done.kind)
            self.holdings.finished(done, now)

    def _resync(self, claim_id: str) -> int:
        """A commit was fenced off. If our claim key is gone, so is the claim: drop it and stop
        its episodes (returns how many). If it still lives, nobody else can have moved its
        episodes (requeues need the key gone): an earlier commit of ours landed without our
        hearing back, or someone rewrote a group of ours (an ack of a finished member). Forget
        the episodes no longer running under the claim, keep the rest (with the groups as
        they are now) for the next pass."""
        claim = self.holdings.claim(claim_id)
        kv, _ = self.registry.get(self.keys.claim(self.host, claim_id))
        if kv is None or kv.create_revision != claim.token:
            stopped = self.holdings.drop(claim_id)
            for episode_id in stopped:
                self.pool.cancel(episode_id)
            return len(stopped)
        ours = self.ledger.still_held(claim, self.holdings.episodes_of(claim_id))
        if self.holdings.resynced(claim_id, ours):  # all committed: only the claim key is left to go
            self.ledger.commit(claim, [], last=True)
            self.holdings.drop(claim_id)
        return 0

    def _count_commit(self, landed: bool, finals: Sequence[EpisodeRecord]) -> None:
        if not landed:
            self.metrics.stale_commits.inc()
            return
        self.metrics.commits.inc()
        for record in finals:
            self.metrics.attempt_committed(record)


Group = tuple[list[Settlement], list[Candidate]]  # one settle call's commits and claims


def _txn_groups(settlements: list[Settlement], pairs: list[Candidate]) -> list[Group]:
    """Pack settlements, and an entry to claim for each one that frees a worker, into settle
    calls of at most ``REQUEST_OPS`` ops of up to ~0.5 KB, which keeps a request well under
    etcd's 1.5 MiB (an entry's claim costs 3 and one per episode, as ``Settlement.size`` counts
    a commit). ``Ledger.settle`` splits a call further where etcd's ops limit needs it. The
    entries keep their order, idle workers' first: a batch claimed for a look-ahead slot would
    otherwise take the idle worker first (pool.dispatch), and a single claimed after it none."""
    groups: list[Group] = []
    budget = 0
    queued = iter(pairs)
    for item in settlements:
        entry = next(queued, None) if item.last else None
        cost = item.size + (3 + len(entry[0].ids) if entry else 0)
        if not groups or budget + cost > REQUEST_OPS:
            groups.append(([], []))
            budget = 0
        groups[-1][0].append(item)
        if entry:
            groups[-1][1].append(entry)
        budget += cost
    return groups
