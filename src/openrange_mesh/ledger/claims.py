"""What a claim is to its owner, and what it commits: values the ledger's claim and settle txns
return and take."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..model import EpisodeRecord
from .homes import Home


@dataclass(frozen=True, slots=True)
class Claim:
    """What an owner holds: running records it may commit while its claim key lives."""

    host: str
    claim_id: str
    token: int  # create_revision of the claim key == the claim txn's revision
    lease: int
    episode_ids: tuple[str, ...]
    # The group records its episodes live in, as this owner last wrote them (homes.py): a
    # commit compares their mod_revision and rewrites them. Episodes of their own key compare
    # theirs to the token instead (only the owner writes a running record).
    homes: dict[bytes, Home] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settlement:
    """Results of some of a claim's episodes, ready to commit (see ``Ledger.settle``)."""

    claim: Claim
    finals: Sequence[EpisodeRecord]
    last: bool  # these are the claim's final open episodes: its key goes too
    cancelled: frozenset[str] = frozenset()  # cancel markers seen for them, deleted with them

    @property
    def size(self) -> int:
        """What this commit adds to a request, in ops of up to ~0.5 KB (a record under its own
        key is ~0.4 KB; a member's share of its group's compressed value far less)."""
        return 2 + len(self.finals)
