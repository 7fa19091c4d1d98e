"""Where a request stands, told to its user only."""

from __future__ import annotations

from dataclasses import dataclass

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import (
    PlanEntry,
    ReadyEntry,
    RequestStatus,
    RuleRequested,
    StatusRequested,
)
from dlaas.errors import PermanentError
from dlaas_stager import domain
from dlaas_stager.ports import Catalog
from dlaas_stager.store import CANCELLED, FAILED, PENDING, STAGED, VISIBLE, Store

LISTED = 10_000  # files listed in one report; counts cover all


@dataclass(frozen=True)
class StatusReporter:
    """Answers ``status-requested`` on the asking user's own routing key."""

    bus: Bus
    store: Store

    async def on_status_requested(
        self, event: StatusRequested, delivery: Delivery
    ) -> None:
        """Report counts, ready files (with paths) and failures; someone else's: unknown."""
        domain.check_user(event, delivery.user_id)
        request_id = str(event.request_id)
        report = await self._report(event) if await self.store.owner(request_id) == event.user else (
            RequestStatus(request_id=event.request_id, user=event.user, state="unknown")
        )  # fmt: skip
        await self.bus.publish(
            report,
            exchange=topology.NOTIFY,
            routing_key=topology.status_routing_key(event.user, request_id),
            correlation_id=delivery.correlation_id,
        )

    async def _report(self, event: StatusRequested) -> RequestStatus:
        request_id = str(event.request_id)
        summary = await self.store.summary(request_id)
        assert summary is not None  # noqa: S101  (owner() found the request)
        rows = await self.store.file_rows(request_id, LISTED)
        count = summary.by_state.get
        return RequestStatus(
            request_id=event.request_id, user=event.user,
            state=summary.state if summary.state != "accepted" or not summary.done
            else "completed",
            rse=summary.rse, files_total=sum(summary.by_state.values()),
            files_waiting=count(PENDING, 0) + count(STAGED, 0),
            files_ready=count(VISIBLE, 0), files_failed=count(FAILED, 0) + count(CANCELLED, 0),
            bytes_total=summary.bytes_total, bytes_ready=summary.bytes_ready,
            ready=[ReadyEntry(did=r.did, path=r.path, pfn=r.pfn, cache_url=r.cache_url,
                              bytes=r.bytes) for r in rows if r.state == VISIBLE],
            failed={r.did: r.reason or "" for r in rows if r.state in (FAILED, CANCELLED)},
        )  # fmt: skip


async def plan(catalog: Catalog, event: RuleRequested) -> RequestStatus:
    """What a request would stage, DID by DID, creating nothing (``--dry-run``)."""
    entries = []
    for did in dict.fromkeys(event.dids):
        try:
            files = (await catalog.list_files([did]))[did]
            kind = await catalog.did_kind(did)
            replicas = await catalog.replicas_at([did], event.rse)
        except PermanentError as exc:
            entries.append(PlanEntry(did=did, kind="UNKNOWN", reason=str(exc)))
            continue
        available = sum(
            1 for f in files if f.did in replicas and replicas[f.did].available
        )
        entries.append(
            PlanEntry(
                did=did,
                kind=kind,
                files=len(files),
                bytes=sum(f.bytes for f in files),
                available=available,
            )
        )
    return RequestStatus(
        request_id=event.request_id, user=event.user, state="planned", rse=event.rse,
        files_total=sum(e.files for e in entries),
        bytes_total=sum(e.bytes for e in entries), plan=entries,
    )  # fmt: skip
