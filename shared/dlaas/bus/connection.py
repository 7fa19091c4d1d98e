"""One robust connection per process, a confirming channel, persistent publishing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    FieldValue,
)

from dlaas.bus import batch, topology
from dlaas.contracts.base import Event
from dlaas.errors import TransientError
from dlaas.settings import BusSettings

log = structlog.get_logger(__name__)

JSON = "application/json"

# what a publish or an ack raises while the connection is down or being restored
CONNECTION_LOST: tuple[type[Exception], ...] = (
    ConnectionError,  # aiormq's AMQPConnectionError and ConnectionClosed too
    aiormq.exceptions.ChannelInvalidStateError,
)
ACK_FAILURES: tuple[type[Exception], ...] = (
    *CONNECTION_LOST,
    aiormq.exceptions.AMQPError,
)


@dataclass
class _Tags:
    """Delivery tags of one AMQP channel that are handled but not yet acked."""

    floor: int = 0  # every tag <= floor is settled
    done: set[int] = field(default_factory=set)  # handled, ack not sent yet
    settled: set[int] = field(default_factory=set)  # > floor, acked or rejected alone


class Acks:
    """Acks of handled deliveries, sent once per event-loop turn, many in one frame.

    A handler's ack is queued, not written: at the end of the loop turn every channel gets
    one ``basic.ack(multiple=True)`` up to the highest tag below which every delivery is
    handled (tags are consecutive per channel), plus single acks for handled tags above a
    gap (a delivery still in a handler). A tag we never saw stops the run, so a multiple
    ack never covers a message nobody handled: at-least-once holds, the broker does a
    fraction of the settle work.
    """

    def __init__(self) -> None:
        self._tags: dict[aiormq.abc.AbstractChannel, _Tags] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._scheduled = False

    def ack(self, message: AbstractIncomingMessage) -> None:
        """Queue the ack of a handled message (sent at the end of this loop turn)."""
        tags = self._for(message)
        if tags is None or message.delivery_tag is None:
            return  # its channel is gone: the broker redelivers it, handlers are idempotent
        tags.done.add(message.delivery_tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    async def reject(self, message: AbstractIncomingMessage) -> None:
        """Reject without requeue now (its queue dead-letters it) and remember it settled."""
        await message.reject(requeue=False)
        tags = self._for(message)
        if tags is not None and message.delivery_tag is not None:
            tags.settled.add(message.delivery_tag)

    async def drain(self) -> None:
        """Send every queued ack now (before the channel closes)."""
        while self._scheduled or self._flushing is not None:
            if self._flushing is None:
                self._start_flush()
            task = self._flushing
            if task is not None and not task.done():
                await task
            else:  # finished, its callback (which clears it) not run yet: let it run
                await asyncio.sleep(0)

    def _for(self, message: AbstractIncomingMessage) -> _Tags | None:
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return None
        tags = self._tags.get(channel)
        if tags is None:
            for closed in [c for c in self._tags if c.is_closed]:
                del self._tags[closed]
            tags = self._tags[channel] = _Tags()
        return tags

    def _start_flush(self) -> None:
        if self._flushing is not None:
            return  # _flushed starts the next one: acks go out in tag order
        self._scheduled = False
        self._flushing = asyncio.create_task(self._flush())
        self._flushing.add_done_callback(self._flushed)

    def _flushed(self, _: asyncio.Task[None]) -> None:
        self._flushing = None
        if self._scheduled:
            self._start_flush()

    async def _flush(self) -> None:
        for channel, tags in list(self._tags.items()):
            upto, singles = _settle(tags)
            try:
                if upto is not None:
                    await channel.basic_ack(upto, multiple=True)
                for tag in singles:
                    await channel.basic_ack(tag)
            except ACK_FAILURES as exc:
                log.warning("ack_failed", error=repr(exc))  # redelivered: idempotent


def _settle(tags: _Tags) -> tuple[int | None, list[int]]:
    """The tag to ack with ``multiple`` and the ones to ack alone; moves the floor."""
    upto, tag = None, tags.floor + 1
    while tag in tags.done or tag in tags.settled:
        if tag in tags.done:
            tags.done.discard(tag)
            upto = tag
        else:
            tags.settled.discard(tag)
        tag += 1
    tags.floor = tag - 1
    singles = sorted(tags.done)
    tags.settled.update(singles)
    tags.done.clear()
    return upto, singles


# the exchanges only dlaas publishes to and reads with dlaas.bus.batch
_BATCHED = frozenset({topology.EVENTS, topology.NOTIFY})


@dataclass(frozen=True)
class _Route:
    """Where a message goes: events sharing all of it may share a message."""

    exchange: str
    routing_key: str
    user_id: str | None
    mandatory: bool


@dataclass
class _Outgoing:
    """An event waiting for its publish."""

    event_type: str
    body: bytes
    message_id: str
    correlation_id: str | None
    future: asyncio.Future[None] | None = None


def _answer(items: list[_Outgoing], exc: BaseException | None) -> None:
    """Answer the publishers of ``items``: confirmed, or the error (each its own)."""
    for item in items:
        future = item.future
        if future is None or future.done():
            continue  # its publisher was cancelled
        if exc is None:
            future.set_result(None)
        elif isinstance(exc, TransientError):
            future.set_exception(TransientError(str(exc)))
        else:
            future.set_exception(exc)


class Bus:
    """A process's link to RabbitMQ: publisher confirms on, every message persistent."""

    def __init__(
        self,
        settings: BusSettings,
        *,
        name: str,
        mandatory: bool = False,
        declare: bool = True,
    ) -> None:
        self.declare = (
            declare  # False (clients): look exchanges up, needing no configure right
        )
        self.settings = settings
        self.name = name
        self.mandatory = mandatory  # raise DeliveryError when no queue takes a message
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        # readiness checks besides the broker's, by name (``/readyz``)
        self.checks: dict[str, Callable[[], Awaitable[bool]]] = {}
        # a second channel for the odd mandatory publish of a bus that is not mandatory
        self._strict: dict[str, AbstractExchange] | None = None
        self._strict_lock = asyncio.Lock()
        self.acks = Acks()
        # events waiting to be published together (see publish)
        self._outbox: dict[_Route, list[_Outgoing]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._down = False  # the connection was lost and is not back yet

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Release ``callback``'s resource when the bus closes (stores, HTTP clients)."""
        self._on_close.append(callback)

    async def connect(self) -> Self:
        """Connect, open a confirming channel and declare the exchanges."""
        self._connection = await aio_pika.connect_robust(
            self.settings.url.get_secret_value(),
            client_properties={"connection_name": self.name},
            ssl_context=self.settings.ssl_context(),
            reconnect_interval=self.settings.reconnect_interval_s,
        )
        # aio-pika reconnects, reopens the channel and consumes again on its own
        self._connection.reconnect_callbacks.add(self._reconnected)
        self._connection.close_callbacks.add(self._lost)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=self.mandatory
        )
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        lookup = topology.declare_exchanges if self.declare else topology.get_exchanges
        self._exchanges = await lookup(self._channel)
        log.info("bus_connected", url=self.settings.display_url, service=self.name)
        return self

    def _reconnected(self, _: object) -> None:
        self._down = False
        log.info("bus_reconnected", url=self.settings.display_url, service=self.name)

    def _lost(self, _: object, exc: BaseException | None) -> None:
        # None or a cancellation: closed by us (close()); otherwise once per outage
        if (
            exc is not None
            and not isinstance(exc, asyncio.CancelledError)
            and not self._down
        ):
            self._down = True
            log.warning("bus_connection_lost", error=repr(exc), service=self.name)

    @property
    def channel(self) -> AbstractChannel:
        """The channel (connect first)."""
        if self._channel is None:
            raise RuntimeError("Bus.connect() was not awaited")
        return self._channel

    @property
    def connected(self) -> bool:
        """Whether the connection is open now (not closed, not lost and reconnecting)."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and not self._down
        )

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        user_id: str | None = None,
        routing_key: str | None = None,
        exchange: str = topology.EVENTS,
        mandatory: bool | None = None,
    ) -> None:
        """Publish an event persistently and wait for the broker's confirm.

        ``mandatory`` (default: the bus's) makes a message no queue takes raise
        ``aio_pika.exceptions.DeliveryError`` instead of vanishing. Events on the events
        and notify exchanges published in the same moment with the same routing key travel together
        (:mod:`dlaas.bus.batch`); each caller returns once its own event is confirmed.
        """
        outgoing = _Outgoing(
            event.event_type,
            event.model_dump_json().encode(),
            str(event.event_id),
            correlation_id,
        )
        key = _Route(
            exchange,
            routing_key or event.routing_key(),
            user_id,
            self.mandatory if mandatory is None else mandatory,
        )
        if exchange not in _BATCHED or self.settings.batch_max_events <= 1:
            await self._send(key, [outgoing])
            return
        loop = asyncio.get_running_loop()
        outgoing.future = loop.create_future()
        self._outbox.setdefault(key, []).append(outgoing)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_outbox())
        await outgoing.future

    async def _flush_outbox(self) -> None:
        """Send what was published, group by group, until nothing waits (group commit)."""
        try:
            await asyncio.sleep(0)  # let the publishers woken in this loop turn join
            while self._outbox:
                groups, self._outbox = self._outbox, {}
                sends = [
                    (key, chunk)
                    for key, items in groups.items()
                    for chunk in self._chunks(items)
                ]
                if len(sends) == 1:  # the common case: no task to gather one send
                    await self._send_settling(*sends[0])
                else:
                    await asyncio.gather(*(self._send_settling(*s) for s in sends))
        except BaseException as exc:  # cancelled (closing): nobody may wait forever
            for items in self._outbox.values():
                _answer(items, exc)
            self._outbox.clear()
            raise
        finally:
            self._flusher = None

    def _chunks(self, items: list[_Outgoing]) -> list[list[_Outgoing]]:
        """Batches under the event count and half the size a consumer accepts."""
        limit, size = self.settings.max_message_bytes // 2, 0
        chunks: list[list[_Outgoing]] = [[]]
        for item in items:
            size += len(item.body) + 200
            if chunks[-1] and (
                len(chunks[-1]) >= self.settings.batch_max_events or size > limit
            ):
                chunks.append([])
                size = len(item.body) + 200
            chunks[-1].append(item)
        return chunks

    async def _send_settling(self, key: _Route, items: list[_Outgoing]) -> None:
        try:
            await self._send(key, items)
        except BaseException as exc:
            _answer(items, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            _answer(items, None)

    async def _send(self, key: _Route, items: list[_Outgoing]) -> None:
        """One message for ``items``: a plain event if alone, else a batch."""
        headers: dict[str, FieldValue] | None
        if len(items) == 1:
            alone = items[0]
            body, kind, message_id = alone.body, alone.event_type, alone.message_id
            correlation_id, headers = alone.correlation_id, None
        else:
            body = batch.pack(
                [
                    batch.item_json(i.event_type, i.body, i.message_id, i.correlation_id)
                    for i in items
                ]
            )
            kind, message_id = batch.BATCH_TYPE, str(uuid.uuid4())
            correlation_id, headers = None, {batch.BATCH_HEADER: len(items)}
        message = aio_pika.Message(
            body=body,
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            type=kind,
            user_id=key.user_id,
            app_id=self.name,
            headers=headers,
        )
        strict = key.mandatory and not self.mandatory
        try:
            exchanges = await self._strict_exchanges() if strict else self._exchanges
            await exchanges[key.exchange].publish(
                message, routing_key=key.routing_key, mandatory=key.mandatory
            )
        except CONNECTION_LOST as exc:
            # not confirmed: try again once reconnected (the message is redelivered or
            # retried), never dead-letter it as if it were a bug
            raise TransientError(
                f"broker connection lost while publishing: {exc!r}"
            ) from exc

    async def _strict_exchanges(self) -> dict[str, AbstractExchange]:
        """The exchanges on a channel where a returned message raises (opened once)."""
        async with self._strict_lock:
            if self._strict is None:
                if self._connection is None:
                    raise RuntimeError("Bus.connect() was not awaited")
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._strict = await topology.get_exchanges(channel)
            return self._strict

    async def send_to_queue(self, queue: str, message: aio_pika.Message) -> None:
        """Put a message straight into a queue (retry and dead-letter queues)."""
        await self.channel.default_exchange.publish(message, routing_key=queue)

    async def close(self) -> None:
        """Close the connection, then what was registered with :meth:`on_close` (idempotent)."""
        if self._connection is not None and not self._connection.is_closed:
            if not self._down:  # with the broker away, unacked messages are back already
                await self.acks.drain()
            await self._connection.close()
        while self._on_close:
            await self._on_close.pop()()
