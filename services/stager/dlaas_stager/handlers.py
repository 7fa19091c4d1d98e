"""The stager's handlers: stage requests, Rucio's events, and the files' final states."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import (
    FileFailed,
    FileStaged,
    FileVisible,
    RequestAccepted,
    RequestCompleted,
    RequestFailed,
    RuleRequested,
)
from dlaas.contracts.hermes import RuleOk, TransferFinished
from dlaas.errors import PermanentError, TransientError
from dlaas_stager import domain
from dlaas_stager.ports import Catalog, Replica, RuleSpec
from dlaas_stager.settings import StagerOptions
from dlaas_stager.store import (
    FAILED,
    PENDING,
    STAGED,
    VISIBLE,
    NewRequest,
    Store,
    WaitingFile,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Stager:
    """Handlers with their dependencies (the composition root builds one)."""

    bus: Bus
    catalog: Catalog
    store: Store
    options: StagerOptions

    async def on_rule_requested(self, event: RuleRequested, delivery: Delivery) -> None:
        """Create the rules, record the files, report what is already there."""
        with structlog.contextvars.bound_contextvars(
            request_id=str(event.request_id), user=event.user, rse=event.rse
        ):
            domain.check_user(event, delivery.user_id)
            try:
                await self._accept(event, delivery.correlation_id)
            except PermanentError as exc:
                log.warning("request_refused", reason=str(exc))
                failed = RequestFailed(
                    request_id=event.request_id, user=event.user, reason=str(exc)
                )
                await self.bus.publish(failed, correlation_id=delivery.correlation_id)

    async def _accept(self, event: RuleRequested, correlation_id: str | None) -> None:
        files = domain.unique_files(await self.catalog.list_files(event.dids))
        spec = RuleSpec(
            dids=event.dids,
            rse=event.rse,
            account=domain.account_for(event.user, self.options.accounts),
            lifetime_s=domain.lifetime_seconds(event.lifetime_days, self.options),
            activity=event.activity or self.options.activity,
            grouping=self.options.grouping,
        )
        rule_ids = await self.catalog.add_rules(spec)
        request_id = str(event.request_id)
        await self.store.save_request(
            NewRequest(
                request_id,
                event.user,
                spec.account,
                event.rse,
                correlation_id,
                files,
                rule_ids,
            )
        )
        replicas = await self.catalog.replicas_at(event.dids, event.rse)
        await self.bus.publish(
            RequestAccepted(
                request_id=event.request_id,
                user=event.user,
                rse=event.rse,
                files_total=len(files),
                bytes_total=sum(f.bytes for f in files),
                files_available=sum(
                    1 for f in files if f.did in replicas and replicas[f.did].available
                ),
                rule_ids=rule_ids,
            ),
            correlation_id=correlation_id,
        )
        log.info("request_accepted", files=len(files), rule_ids=rule_ids)
        await self._stage(await self.store.waiting_in_request(request_id), replicas)
        await self._check_complete(request_id)

    async def _stage(
        self, waiting: Iterable[WaitingFile], replicas: Mapping[str, Replica]
    ) -> int:
        """Publish ``file-staged`` for each waiting file whose replica is AVAILABLE."""
        staged = 0
        for file in waiting:
            replica = replicas.get(file.did)
            if replica is None or not replica.available or replica.pfn is None:
                continue
            # claim first: of two handlers racing (transfer-done, rule_ok) one announces it
            if not await self.store.set_file_state(file.request_id, file.did, STAGED):
                continue
            try:
                await self.bus.publish(
                    FileStaged(
                        request_id=file.request_id,
                        user=file.user,
                        did=file.did,
                        rse=file.rse,
                        pfn=replica.pfn,
                        bytes=replica.bytes,
                        adler32=replica.adler32,
                    ),
                    correlation_id=file.correlation_id,
                )
            except BaseException:
                await self.store.set_file_state(file.request_id, file.did, PENDING)
                raise
            log.info(
                "file_staged", did=file.did, request_id=file.request_id, pfn=replica.pfn
            )
            staged += 1
        return staged

    async def on_transfer_done(
        self, payload: TransferFinished, delivery: Delivery
    ) -> None:
        """A transfer finished: stage the file once Rucio has its replica AVAILABLE."""
        did = f"{payload.scope}:{payload.name}"
        with structlog.contextvars.bound_contextvars(did=did, rse=payload.dst_rse):
            waiting = await self.store.waiting_for_file(did, payload.dst_rse)
            if not waiting:
                return
            replicas = await self.catalog.replicas_at([did], payload.dst_rse)
            if await self._stage(waiting, replicas):
                return
            # the poller reports done before the finisher marks the replica AVAILABLE
            if not delivery.last_attempt:
                raise TransientError(
                    f"replica of {did} not yet AVAILABLE at {payload.dst_rse}"
                )
            log.info("left_to_rule_ok", reason="replica still not AVAILABLE")

    async def on_transfer_failed(self, payload: TransferFinished, _: Delivery) -> None:
        """Rucio retries failed transfers itself; record the reason for the user."""
        did = f"{payload.scope}:{payload.name}"
        log.warning(
            "transfer_failed", did=did, rse=payload.dst_rse, reason=payload.reason
        )

    async def on_rule_ok(self, payload: RuleOk, _: Delivery) -> None:
        """A rule (or its dataset lock) is OK: stage every file it still owes."""
        with structlog.contextvars.bound_contextvars(rule_id=payload.rule_id):
            waiting = await self.store.waiting_for_rule(payload.rule_id)
            by_rse: dict[str, list[WaitingFile]] = defaultdict(list)
            for file in waiting:
                by_rse[file.rse].append(file)
            for rse, files in by_rse.items():
                dids = sorted({f.did for f in files})
                await self._stage(files, await self.catalog.replicas_at(dids, rse))

    async def on_file_visible(self, event: FileVisible, _: Delivery) -> None:
        """The user can open the file: count it towards completion."""
        await self.store.set_file_state(str(event.request_id), event.did, VISIBLE)
        await self._check_complete(str(event.request_id))

    async def on_file_failed(self, event: FileFailed, _: Delivery) -> None:
        """The file cannot be made available: count it towards completion."""
        await self.store.set_file_state(
            str(event.request_id), event.did, FAILED, reason=event.reason
        )
        await self._check_complete(str(event.request_id))

    async def _check_complete(self, request_id: str) -> None:
        summary = await self.store.summary(request_id)
        if summary is None or not summary.done or summary.state == "completed":
            return
        await self.bus.publish(
            RequestCompleted(
                request_id=summary.request_id,
                user=summary.user,
                files_ready=summary.by_state.get(VISIBLE, 0),
                files_failed=summary.by_state.get(FAILED, 0),
                bytes_ready=summary.bytes_ready,
                duration_s=max(0.0, time.time() - summary.created_at),
            ),
            correlation_id=summary.correlation_id,
        )
        await self.store.set_request_state(request_id, "completed")
        log.info("request_completed", request_id=request_id, files=summary.by_state)
