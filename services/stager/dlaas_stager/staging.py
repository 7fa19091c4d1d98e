"""Announcing what became of files and requests: publish, then record it in the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from dlaas.bus.connection import Bus
from dlaas.contracts import FileFailed, FilePublished, FileStaged, RequestCompleted
from dlaas_stager.ports import Replica
from dlaas_stager.store import (
    CANCELLED,
    FAILED,
    PUBLISH,
    STAGED,
    VISIBLE,
    Store,
    WaitingFile,
)

log = structlog.get_logger(__name__)

CHUNK = 500  # files claimed and announced together (a rule of 100,000 files: in chunks)


def _claim_of(file: WaitingFile) -> str:
    """The state that claims a file: visible for a published file, else staged."""
    return VISIBLE if file.kind == PUBLISH else STAGED


@dataclass(frozen=True)
class Announcer:
    """Tells the bus what became of files and requests, and moves them forward in the store."""

    bus: Bus
    store: Store
    # requests whose completion a handler is deciding now: the others need not (one would
    # do, and a batch of a request's last files would otherwise all sum it up)
    _completing: set[str] = field(default_factory=set, init=False, compare=False)

    async def stage(
        self, waiting: Iterable[WaitingFile], replicas: Mapping[str, Replica]
    ) -> int:
        """Publish ``file-staged`` for each waiting file whose replica is AVAILABLE.

        Announced first, claimed after: the claim (the file's move to staged) only spares
        later look-ups (a repeated transfer-done, rule_ok, the watchdog) a second
        announcement, so it no longer holds the announcement up, and a lone file's claim
        rides in the store's next commit instead of paying one of its own. Two handlers
        racing for a file may both announce it; every consumer downstream takes a repeat
        as a no-op (the notifier tells the user once), as it does a redelivered message's:
        a process that dies between the announcement and the claim announces again when
        its message comes back.
        """
        ready = [
            (file, replica)
            for file in waiting
            if (replica := replicas.get(file.did)) is not None and replica.available
        ]
        for start in range(0, len(ready), CHUNK):
            chunk = ready[start : start + CHUNK]
            await self._announce_all(chunk)
            # a lone file (most transfer-dones): its claim waits for company, and no task
            # is gathered for it; a chunk's many claims are a batch
            claimed = (
                [await self._claim(chunk[0][0], lazy=True)]
                if len(chunk) == 1
                else await asyncio.gather(*(self._claim(f, lazy=False) for f, _ in chunk))
            )
            done = {f.request_id for (f, _), c in zip(chunk, claimed, strict=True)
                    if c and f.kind == PUBLISH}  # fmt: skip
            for request_id in sorted(done):  # a published file is done once claimed
                await self.check_complete(request_id)
        return len(ready)

    async def _claim(self, file: WaitingFile, *, lazy: bool) -> bool:
        if file.state == STAGED:
            log.info("file_announced_again", did=file.did, request_id=file.request_id)
            return False
        return await self.store.set_file_state(
            file.request_id, file.did, _claim_of(file), lazy=lazy
        )

    async def _announce_all(self, announced: list[tuple[WaitingFile, Replica]]) -> None:
        if len(announced) == 1:  # no task to gather one
            await self._announce(*announced[0])
            return
        outcomes = await asyncio.gather(
            *(self._announce(file, replica) for file, replica in announced),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _announce(self, file: WaitingFile, replica: Replica) -> None:
        # a published file is done once safe; a staged one goes on to cache and mount
        pfn = replica.pfn or ""
        event: FileStaged | FilePublished = (
            FilePublished(request_id=file.request_id, user=file.user, did=file.did,
                          rse=file.rse, pfn=pfn, bytes=replica.bytes)
            if file.kind == PUBLISH else
            FileStaged(request_id=file.request_id, user=file.user, did=file.did,
                       rse=file.rse, pfn=pfn, bytes=replica.bytes,
                       adler32=replica.adler32, dataset=file.parent, node=file.node)
        )  # fmt: skip
        await self.bus.publish(event, correlation_id=file.correlation_id)
        log.debug("file_staged", did=file.did, request_id=file.request_id, pfn=pfn)

    async def fail(self, file: WaitingFile, reason: str) -> None:
        """Tell the user a file cannot be staged, and why."""
        if not await self.store.set_file_state(
            file.request_id, file.did, FAILED, reason=reason
        ):
            return
        event = FileFailed(
            request_id=file.request_id,
            user=file.user,
            did=file.did,
            reason=reason,
            stage="rucio",
        )
        await self.bus.publish(event, correlation_id=file.correlation_id)
        log.warning(
            "file_failed", did=file.did, request_id=file.request_id, reason=reason
        )
        await self.check_complete(file.request_id)

    async def check_complete(self, request_id: str, *, lazy: bool = False) -> None:
        """Publish ``request-completed`` once every file is visible or failed.

        ``lazy``: its completeness check rides with the store's next batch.
        """
        if (
            await self.store.is_open(request_id, lazy=lazy)
            or request_id in self._completing
        ):
            return  # the common case, answered for many handlers by one query
        self._completing.add(request_id)
        try:
            await self._complete(request_id)
        finally:
            self._completing.discard(request_id)

    async def _complete(self, request_id: str) -> None:
        summary = await self.store.summary(request_id)
        if summary is None or not summary.done or summary.state != "accepted":
            return
        event = RequestCompleted(
            request_id=summary.request_id,
            user=summary.user,
            files_ready=summary.by_state.get(VISIBLE, 0),
            files_failed=summary.by_state.get(FAILED, 0)
            + summary.by_state.get(CANCELLED, 0),
            bytes_ready=summary.bytes_ready,
            duration_s=max(0.0, time.time() - summary.created_at),
        )
        if not await self.store.set_request_state(request_id, "completed"):
            return  # another handler completed it first
        try:
            await self.bus.publish(event, correlation_id=summary.correlation_id)
        except BaseException:
            await self.store.set_request_state(request_id, "accepted")
            raise
        log.info("request_completed", request_id=request_id, files=summary.by_state)
