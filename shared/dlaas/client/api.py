"""Stage DIDs and wait for them, from a notebook (``await astage(...)``) or a script (``stage``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from uuid import UUID, uuid4

from aio_pika.abc import AbstractQueue
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.client.results import Listener, ReadyFile, StageResult
from dlaas.contracts import (
    CancelRequested,
    Notification,
    PublishRequested,
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
    instance: str | None = Field(
        default=None, description="Rucio instance of your requests; unset: the default"
    )
    node: str | None = Field(
        default=None,
        description="The node this notebook runs on (Kubernetes: spec.nodeName through the "
        "downward API): its fuse agent makes the files visible. Unset: any agent",
    )


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
    ask_again: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Fold notifications in until the request is done (or one of the ``until`` kinds).

    A request that completed with files this client has not heard of (they were told
    before it listened, and its status report was made a moment before the stager
    recorded them) is asked about once more with ``ask_again``: the completion comes
    after every file is recorded, so the next report has them all.
    """
    async with asyncio.timeout(timeout), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                # several notifications that happened together come in one message
                events = batch.unbatch(message)
            finished = False
            for kind, body in events:
                if kind == RequestStatus.event_type:
                    result.apply_status(RequestStatus.model_validate_json(body))
                    finished |= result.done or "status" in until
                    continue
                note = Notification.model_validate_json(body)
                if result.apply(note) and on_update is not None:
                    on_update(note, result)
                finished |= note.kind in until or (not until and result.done)
            if finished:
                return
            if ask_again is not None and not until and result.completed:
                await ask_again()
                ask_again = None


async def astage(
    dids: Sequence[str],
    *,
    rse: str,
    lifetime_days: float | None = None,
    wait: bool = True,
    timeout: float | None = None,
    settings: BusSettings | None = None,
    on_update: Listener | None = None,
    dry_run: bool = False,
    node: str | None = None,
    instance: str | None = None,
) -> StageResult:
    """Ask for ``dids`` at ``rse``; with ``wait``, return once every file is ready or failed.

    ``node`` (default ``$DLAAS_NODE``) names the node whose fuse agent makes the files visible;
    ``instance`` (default ``$DLAAS_INSTANCE``, else the stager's default) the Rucio instance.

    With ``dry_run`` nothing is created: the result's ``plan`` says, per DID, its kind, files,
    bytes and how many are already at ``rse``.

    Raises:
        TimeoutError: ``timeout`` passed first (the request goes on; see ``dlaas status``).
        aio_pika.exceptions.DeliveryError: no stager is running to take the request.
    """
    defaults = ClientSettings()
    bus_settings = settings or defaults.bus
    node = node or defaults.node
    event = RuleRequested(
        request_id=uuid4(), user=bus_settings.login, dids=list(dids), rse=rse,
        lifetime_days=lifetime_days, dry_run=dry_run, node=node.lower() if node else None,
        instance=instance or defaults.instance,
    )  # fmt: skip
    until = ("status",) if dry_run else ()
    return await _ask(event, bus_settings, until=until, timeout=timeout,
                      on_update=on_update, collect=wait or dry_run)  # fmt: skip


async def acancel(
    request_id: UUID | str,
    *,
    timeout: float | None = 60,
    settings: BusSettings | None = None,
) -> StageResult:
    """Cancel a request of ours; returns once the stager confirms (rules removed or kept)."""
    bus_settings = settings or ClientSettings().bus
    event = CancelRequested(request_id=UUID(str(request_id)), user=bus_settings.login)
    return await _ask(event, bus_settings, until=("cancelled",), timeout=timeout)


async def _ask(
    event: RuleRequested | CancelRequested | StatusRequested | PublishRequested,
    settings: BusSettings,
    *,
    until: tuple[str, ...],
    timeout: float | None,
    on_update: Listener | None = None,
    collect: bool = True,
) -> StageResult:
    """Publish a request and fold in what comes back (with ``collect``)."""
    bus = await Bus(
        settings, name=f"dlaas-client:{event.user}", mandatory=True, declare=False
    ).connect()
    try:
        queue = await _listen(bus, event.user, event.request_id)
        # user_id: RabbitMQ checks it against our login, so the stager can trust it
        await bus.publish(event, correlation_id=str(event.request_id), user_id=event.user)
        result = StageResult(event.request_id)

        async def ask_again() -> None:
            again = StatusRequested(request_id=event.request_id, user=event.user)
            await bus.publish(
                again, correlation_id=str(event.request_id), user_id=event.user
            )

        if collect:
            await _collect(
                queue, result, timeout, on_update, until=until, ask_again=ask_again
            )
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
    bus = await Bus(
        bus_settings, name=f"dlaas-client:{bus_settings.login}", declare=False
    ).connect()
    notes: list[Notification] = []
    try:
        queue = await bus.channel.get_queue(topology.inbox(bus_settings.login).name)
        while (message := await queue.get(fail=False)) is not None:
            async with message.process():
                notes += [
                    Notification.model_validate_json(body)
                    for _, body in batch.unbatch(message)
                ]
    finally:
        await bus.close()
    return notes


def checksum(path: Path) -> tuple[int, str]:
    """Size and adler32 (8 hex digits, as Rucio keeps it) of a local file."""
    value, size = 1, 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            value, size = zlib.adler32(chunk, value), size + len(chunk)
    return size, f"{value:08x}"


async def apublish(
    path: Path | str,
    did: str,
    *,
    rse: str,
    pfn: str,
    to_rse: str,
    lifetime_days: float | None = None,
    wait: bool = True,
    timeout: float | None = None,
    settings: BusSettings | None = None,
    instance: str | None = None,
) -> StageResult:
    """Keep a file this notebook produced, and return once it is safe (with ``wait``).

    The file is registered at ``rse`` (where it is, as ``pfn``) under ``did`` and replicated
    to ``to_rse``.
    """
    size, adler32 = await asyncio.to_thread(checksum, Path(path))
    defaults = ClientSettings()
    bus_settings = settings or defaults.bus
    event = PublishRequested(
        request_id=uuid4(), user=bus_settings.login, did=did, rse=rse, pfn=pfn, bytes=size,
        adler32=adler32, to_rse=to_rse, lifetime_days=lifetime_days,
        instance=instance or defaults.instance,
    )  # fmt: skip
    return await _ask(event, bus_settings, until=(), timeout=timeout, collect=wait)


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
    "apublish",
    "astage",
    "astatus",
    "await_request",
    "stage",
]
