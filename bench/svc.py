"""One dlaas service as its own process, as in production, with Rucio replaced by a free fake.

``python -m bench.svc stager|cache_router|fuse_agent|notifier`` (settings from DLAAS_*).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from dlaas.bus.service import main as run_service
from dlaas_stager.app import build as build_stager
from dlaas_stager.ports import FileInfo, Replica, RuleSpec, RuleState
from dlaas_stager.settings import StagerSettings


class ZeroCostCatalog:
    """Rucio at no cost: every file is AVAILABLE at every RSE, at a PFN made from its DID."""

    async def list_files(self, dids: Sequence[str]) -> dict[str, list[FileInfo]]:
        """Each DID is a file."""
        return {did: [FileInfo(did, 1024, "0cc737eb")] for did in dids}

    async def add_rules(self, spec: RuleSpec) -> list[str]:
        """One made-up rule per DID."""
        return [uuid.uuid5(uuid.NAMESPACE_URL, did).hex for did in spec.dids]

    async def replicas_at(self, dids: Sequence[str], rse: str) -> dict[str, Replica]:
        """AVAILABLE at ``rse``, under /data/<rse>/<scope>/<name>."""
        return {did: _replica(did, rse) for did in dids}

    async def rule_state(self, rule_id: str) -> RuleState:
        """Every rule is OK."""
        return RuleState(rule_id, "OK", None)

    async def stuck_files(self, rule_id: str) -> list[str]:  # noqa: ARG002
        """No file is ever stuck."""
        return []

    async def delete_rule(self, rule_id: str) -> None:
        """Nothing to delete."""

    async def register_replica(self, rse: str, file: FileInfo, pfn: str) -> None:
        """Nothing to register."""

    async def did_kind(self, did: str) -> str:  # noqa: ARG002
        """Each DID is a file."""
        return "FILE"


def _replica(did: str, rse: str) -> Replica:
    scope, _, name = did.partition(":")
    pfn = f"root://127.0.0.1:1094//data/{rse.lower()}/{scope}/{name}"
    return Replica(did, "AVAILABLE", pfn, 1024, "0cc737eb")


def _count_sql(out: Path) -> None:
    """Time every SQL statement of this process; write the totals to ``out`` at exit."""
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    started: dict[int, float] = {}

    def before(_conn: Any, cursor: Any, *_: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        entry = stats[" ".join(statement.split())[:90]]
        entry[0] += 1
        entry[1] += time.perf_counter() - started.pop(id(cursor), time.perf_counter())

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    atexit.register(lambda: out.write_text(json.dumps(stats, indent=1)))


def main(service: str) -> None:
    """Run ``service`` (the stager with the zero-cost catalog)."""
    if service == "stager":
        if os.environ.get("BENCH_SQL_STATS"):
            _count_sql(Path(os.environ["BENCH_SQL_STATS"]))
        settings = StagerSettings()
        catalog = ZeroCostCatalog()
        run_service(
            "stager", settings, lambda bus: build_stager(bus, settings, catalog=catalog)
        )
        return
    if service == "cache_router":
        from dlaas_cache_router.app import main as entry  # noqa: PLC0415
    elif service == "fuse_agent":
        from dlaas_fuse_agent.app import main as entry  # noqa: PLC0415
    else:
        from dlaas_notifier.app import main as entry  # noqa: PLC0415
    entry()


if __name__ == "__main__":
    main(sys.argv[1])
