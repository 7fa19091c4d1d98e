"""What the stager needs from the outside, in domain terms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class FileInfo:
    """A file a request resolves to."""

    did: str
    bytes: int
    adler32: str | None
    parent: str | None = None  # the requested dataset or container it came from


@dataclass(frozen=True)
class Replica:
    """A file's replica at one RSE."""

    did: str
    state: str  # Rucio replica state: AVAILABLE, COPYING, UNAVAILABLE, ...
    pfn: str | None
    bytes: int
    adler32: str | None

    @property
    def available(self) -> bool:
        """Readable at the RSE now."""
        return self.state == "AVAILABLE" and self.pfn is not None


@dataclass(frozen=True)
class RuleSpec:
    """A replication rule the stager asks Rucio for."""

    dids: Sequence[str]
    rse: str
    account: str
    lifetime_s: int | None  # None: kept until removed
    activity: str
    grouping: str


@dataclass(frozen=True)
class RuleState:
    """A rule as Rucio reports it."""

    rule_id: str
    state: str  # OK, REPLICATING, STUCK, SUSPENDED, ...
    error: str | None


class Catalog(Protocol):
    """Rucio, as the stager uses it."""

    async def list_files(self, dids: Sequence[str]) -> dict[str, list[FileInfo]]:
        """Files of each DID (a file DID resolves to itself)."""
        ...

    async def add_rules(self, spec: RuleSpec) -> list[str]:
        """Create the rules (or find the existing identical ones); their ids."""
        ...

    async def replicas_at(self, dids: Sequence[str], rse: str) -> dict[str, Replica]:
        """State and root:// PFN at ``rse`` of the files of ``dids``, by file DID."""
        ...

    async def rule_state(self, rule_id: str) -> RuleState:
        """The rule's state and error."""
        ...

    async def stuck_files(self, rule_id: str) -> list[str]:
        """Files whose lock of this rule is STUCK."""
        ...

    async def delete_rule(self, rule_id: str) -> None:
        """Remove the rule (already gone is success)."""
        ...

    async def register_replica(self, rse: str, file: FileInfo, pfn: str) -> None:
        """Declare a file Rucio does not know yet at ``rse`` (already known: success)."""
        ...

    async def did_kind(self, did: str) -> str:
        """FILE, DATASET or CONTAINER."""
        ...
