"""An in-memory Rucio for the stager's Catalog port: a recorder, not a mock."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from dlaas.errors import PermanentError, TransientError
from dlaas_stager.ports import FileInfo, Replica, RuleSpec, RuleState


@dataclass
class FakeCatalog:
    """Datasets of files, replicas at RSEs, rules; counts calls like the real adapter."""

    contents: dict[str, list[FileInfo]] = field(default_factory=dict)
    available: dict[tuple[str, str], str] = field(
        default_factory=dict
    )  # (did, rse) -> pfn
    rules: dict[tuple[str, str, str], str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    rule_states: dict[str, str] = field(
        default_factory=dict
    )  # rule id -> state (default OK)
    stuck: set[str] = field(default_factory=set)  # files whose locks are STUCK
    deleted: list[str] = field(default_factory=list)
    outage: int = 0  # this many calls fail as if Rucio were down
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def add_dataset(self, did: str, n_files: int, size: int = 100) -> list[FileInfo]:
        scope = did.partition(":")[0]
        files = [
            FileInfo(f"{scope}:{did.partition(':')[2]}.f{i}", size, "0000abcd")
            for i in range(n_files)
        ]
        self.contents[did] = files
        return files

    def make_available(self, did: str, rse: str) -> None:
        scope, _, name = did.partition(":")
        self.available[did, rse] = (
            f"root://127.0.0.1:1094//data/{rse.lower()}/{scope}/{name}"
        )

    def _files(self, did: str) -> list[FileInfo]:
        if did in self.contents:
            return self.contents[did]
        for files in self.contents.values():
            for info in files:
                if info.did == did:
                    return [info]
        raise PermanentError(f"Rucio list_files: DataIdentifierNotFound: {did}")

    async def list_files(self, dids: Sequence[str]) -> dict[str, list[FileInfo]]:
        self.calls.append("list_files")
        if self.outage > 0:
            self.outage -= 1
            raise TransientError("Rucio list_files: ConnectionError: connection refused")
        return {did: self._files(did) for did in dids}

    async def add_rules(self, spec: RuleSpec) -> list[str]:
        self.calls.append("add_replication_rule")
        return [
            self.rules.setdefault(
                (did, spec.rse, spec.account), f"rule-{next(self._ids)}"
            )
            for did in spec.dids
        ]

    async def replicas_at(self, dids: Sequence[str], rse: str) -> dict[str, Replica]:
        self.calls.append("list_replicas")
        result: dict[str, Replica] = {}
        for did in dids:
            for info in self._files(did):
                pfn = self.available.get((info.did, rse))
                if pfn is not None:
                    result[info.did] = Replica(
                        info.did, "AVAILABLE", pfn, info.bytes, info.adler32
                    )
        return result

    async def rule_state(self, rule_id: str) -> RuleState:
        self.calls.append("get_replication_rule")
        if rule_id in self.deleted or rule_id not in self.rules.values():
            raise PermanentError(f"Rucio get_replication_rule: RuleNotFound: {rule_id}")
        return RuleState(rule_id, self.rule_states.get(rule_id, "REPLICATING"), None)

    async def stuck_files(self, rule_id: str) -> list[str]:
        self.calls.append("list_replica_locks")
        return sorted(self.stuck)

    async def delete_rule(self, rule_id: str) -> None:
        self.calls.append("delete_replication_rule")
        self.deleted.append(rule_id)

    async def register_replica(self, rse: str, file: FileInfo, pfn: str) -> None:
        self.calls.append("add_replicas")
        self.contents.setdefault(file.did, [file])
        self.available[file.did, rse] = pfn

    async def did_kind(self, did: str) -> str:
        self.calls.append("get_did")
        if did in self.contents:
            return "DATASET"
        self._files(did)
        return "FILE"
