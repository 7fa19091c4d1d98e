"""Stage DIDs and wait for them, from a notebook (``await astage(...)``) or a script (``stage``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID, uuid4

from aio_pika.abc import AbstractQueue
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.contracts import (
    CancelRequested,
    Notification,
    RequestStatus,
    RuleRequested,
    StatusRequested,
)
from dlaas.settings import BusSettings, ServiceSettings


class ClientSettings(ServiceSettings):
    """The client's environment: ``DLAAS_BUS__URL`` (the user's broker login) and defaults."""

    model_config = SettingsConfigDict(
        env_prefix="DLAAS_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    rse: str | None = Field(default=None, description="Default destination RSE")


@dataclass(frozen=True)
class ReadyFile:
    """A file the user can open now."""

    did: str
    path: str
    pfn: str
    cache_url: str
    bytes: int


@dataclass
class StageResult:
    """What became of a stage request."""

    request_id: UUID
    files_total: int | None = None
    ready: dict[str, ReadyFile] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    completed: bool = False
    reason: str | None = None  # the request as a whole failed
    summary: str | None = None

    @property
    def ok(self) -> bool:
        """Completed with every file ready."""
        return self.completed and not self.failed and self.reason is None

    @property
    def paths(self) -> list[str]:
        """Paths of the ready files, for the next cell to open."""
        return [f.path for f in self.ready.values()]

    def apply(self, note: Notification) -> bool:
        """Fold one notification in; False for a repeat (which changes nothing)."""
        if note.did is not None and (note.did in self.ready or note.did in self.failed):
            return False
        if note.kind in ("completed", "failed") and self.completed:
            return False
        if note.kind == "accepted" and self.files_total is not None:
            return False
        if note.kind == "accepted":
            self.files_total = note.files_total
        elif note.kind == "file-ready" and note.did:
            self.ready[note.did] = ReadyFile(
                note.did,
                note.path or "",
                note.pfn or "",
                note.cache_url or "",
                note.bytes or 0,
            )
        elif note.kind == "file-failed" and note.did:
            self.failed[note.did] = note.reason or "unknown reason"
        elif note.kind in ("failed", "cancelled"):
            self.reason, self.completed = note.reason or note.text, True
        elif note.kind == "completed":
            self.completed, self.summary = True, note.text
            self.files_total = (note.files_ready or 0) + (note.files_failed or 0)
        return True

    def apply_status(self, status: RequestStatus) -> None:
        """Fold a status report in: what is ready and failed so far."""
        if status.state == "unknown":
            self.reason, self.completed = "no such request of yours", True
            return
        self.files_total = status.files_total
        for entry in status.ready:
            self.ready.setdefault(entry.did, ReadyFile(
                entry.did, entry.path or "", entry.pfn or "", entry.cache_url or "", entry.bytes
            ))  # fmt: skip
        for did, reason in status.failed.items():
            self.failed.setdefault(did, reason)
        if status.state in ("completed", "cancelled", "failed"):
            self.completed = True
            if status.state != "completed":
                self.reason = self.reason or f"request {status.state}"

    @property
    def done(self) -> bool:
        """Nothing more to wait for (completion seen and every file accounted for)."""
        if self.reason is not None:
            return True
        seen = len(self.ready) + len(self.failed)
        return self.completed and seen >= (self.files_total or 0)


Listener = Callable[[Notification, StageResult], None]


async def _listen(bus: Bus, user: str, request_id: UUID) -> AbstractQueue:
    """A private queue for this request's notifications, bound before the request is sent."""
    queue = await bus.channel.declare_queue(exclusive=True, auto_delete=True)
    # "#": the request's notifications (three words) and its status reports (four)
    routing_key = topology.notify_routing_key(user, str(request_id))
    await queue.bind(topology.NOTIFY, f"{routing_key}.#")
    return queue


async def _collect(
    queue: AbstractQueue,
    result: StageResult,
    timeout: float | None,
    on_update: Listener | None,
    *,
    until: tuple[str, ...] = (),
) -> None:
    """Fold notifications in until the request is done (or one of the ``until`` kinds)."""
    async with asyncio.timeout(timeout), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                if message.type == RequestStatus.event_type:
                    result.apply_status(RequestStatus.model_validate_json(message.body))
                    if result.done or "status" in until:
                        return
                    continue
                note = Notification.model_validate_json(message.body)
            if result.apply(note) and on_update is not None:
                on_update(note, result)
            if note.kind in until or (not until and result.done):
                return


async def astage(
    dids: Sequence[str],
    *,
    rse: str,
    lifetime_days: float | None = None,
    wait: bool = True,
    timeout: float | None = None,
    settings: BusSettings | None = None,
    on_update: Listener | None = None,
) -> StageResult:
    """Ask for ``dids`` at ``rse``; with ``wait``, return once every file is ready or failed.

    Raises:
        TimeoutError: ``timeout`` passed first (the request goes on; see ``dlaas status``).
        aio_pika.exceptions.DeliveryError: no stager is running to take the request.
    """
    bus_settings = settings or ClientSettings().bus
    request_id = uuid4()
    user = bus_settings.login
    event = RuleRequested(
        request_id=request_id,
        user=user,
        dids=list(dids),
        rse=rse,
        lifetime_days=lifetime_days,
    )
    bus = await Bus(bus_settings, name=f"dlaas-client:{user}", mandatory=True).connect()
    try:
        queue = await _listen(bus, user, request_id) if wait else None
        # user_id: RabbitMQ checks it against our login, so the stager can trust it
        await bus.publish(event, correlation_id=str(request_id), user_id=user)
        result = StageResult(request_id)
        if queue is not None:
            await _collect(queue, result, timeout, on_update)
        return result
    finally:
        await bus.close()


async def acancel(
    request_id: UUID | str,
    *,
    timeout: float | None = 60,
    settings: BusSettings | None = None,
) -> StageResult:
    """Cancel a request of ours; returns once the stager confirms (rules removed or kept)."""
    bus_settings = settings or ClientSettings().bus
    rid = UUID(str(request_id))
    user = bus_settings.login
    bus = await Bus(bus_settings, name=f"dlaas-client:{user}", mandatory=True).connect()
    try:
        queue = await _listen(bus, user, rid)
        event = CancelRequested(request_id=rid, user=user)
        await bus.publish(event, correlation_id=str(rid), user_id=user)
        result = StageResult(rid)
        await _collect(queue, result, timeout, None, until=("cancelled",))
        return result
    finally:
        await bus.close()


async def _ask(
    event: CancelRequested | StatusRequested,
    settings: BusSettings,
    *,
    until: tuple[str, ...],
    timeout: float | None,
    on_update: Listener | None = None,
) -> StageResult:
    """Publish a request about an existing stage request and fold in what comes back."""
    bus = await Bus(settings, name=f"dlaas-client:{event.user}", mandatory=True).connect()
    try:
        queue = await _listen(bus, event.user, event.request_id)
        await bus.publish(event, correlation_id=str(event.request_id), user_id=event.user)
        result = StageResult(event.request_id)
        await _collect(queue, result, timeout, on_update, until=until)
        return result
    finally:
        await bus.close()


async def astatus(
    request_id: UUID | str,
    *,
    timeout: float | None = 30,
    settings: BusSettings | None = None,
) -> StageResult:
    """Where a request of ours stands: what is ready (with paths), failed, still waiting."""
    bus_settings = settings or ClientSettings().bus
    event = StatusRequested(request_id=UUID(str(request_id)), user=bus_settings.login)
    return await _ask(event, bus_settings, until=("status",), timeout=timeout)


async def await_request(
    request_id: UUID | str,
    *,
    timeout: float | None = None,
    settings: BusSettings | None = None,
    on_update: Listener | None = None,
) -> StageResult:
    """Wait for an existing request: what is ready now, then each file as it becomes ready."""
    bus_settings = settings or ClientSettings().bus
    event = StatusRequested(request_id=UUID(str(request_id)), user=bus_settings.login)
    return await _ask(event, bus_settings, until=(), timeout=timeout, on_update=on_update)


async def ainbox(*, settings: BusSettings | None = None) -> list[Notification]:
    """Everything sent to us while we were away (the inbox is emptied as it is read)."""
    bus_settings = settings or ClientSettings().bus
    bus = await Bus(bus_settings, name=f"dlaas-client:{bus_settings.login}").connect()
    notes: list[Notification] = []
    try:
        queue = await bus.channel.get_queue(topology.inbox(bus_settings.login).name)
        while (message := await queue.get(fail=False)) is not None:
            async with message.process():
                notes.append(Notification.model_validate_json(message.body))
    finally:
        await bus.close()
    return notes


def stage(dids: Sequence[str], **kwargs: object) -> StageResult:
    """Synchronous :func:`astage`, usable in scripts and inside Jupyter's running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(astage(dids, **kwargs))  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, astage(dids, **kwargs)).result()  # type: ignore[arg-type]


__all__ = [
    "ClientSettings",
    "ReadyFile",
    "StageResult",
    "acancel",
    "ainbox",
    "astage",
    "astatus",
    "await_request",
    "stage",
]
