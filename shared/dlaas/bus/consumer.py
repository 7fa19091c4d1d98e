"""The consumer runtime: decode, dispatch, ack after the side effect, retry or dead-letter.

Outcomes of one message:
- handled: acked after the handler returned;
- a valid type this queue has no use for: acked and counted (``ignored``);
- malformed, unknown type, too large, wrong encoding, permanent error or a bug in a handler:
  sent to ``<queue>.dlq`` with ``x-dlaas-reason``, logged ``dead_lettered``, then acked;
- transient error: sent to ``<queue>.retry.<n>`` with the next attempt number, then acked;
  past the last delay it is dead-lettered like a permanent error.
The service never stops consuming because of one message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel, ValidationError

from dlaas import durability
from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.bus.metrics import HANDLER_SECONDS, MESSAGES
from dlaas.errors import MessageRejectedError, PermanentError, TransientError
from dlaas.logging import bound

log = structlog.get_logger(__name__)

SLOW_S = 1.0  # a message handled slower than this is logged at info, the others at debug
ATTEMPT_HEADER = "x-dlaas-attempt"
REASON_HEADER = "x-dlaas-reason"
# the routing key a message was first published with: retry and parked queues give it back
# through the default exchange, under the queue's name (hermes's key names its instance)
ROUTING_KEY_HEADER = "x-dlaas-routing-key"


@dataclass(frozen=True)
class Delivery:
    """What a handler may know about the message besides its body."""

    queue: str
    attempt: int
    max_attempts: int
    message_id: str | None
    correlation_id: str | None
    user_id: str | None  # validated by RabbitMQ against the publisher's login
    routing_key: str | None
    redelivered: bool = (
        False  # the broker gave it before: its handler may have died in it
    )

    @property
    def last_attempt(self) -> bool:
        """Whether a transient failure now would be final."""
        return self.attempt >= self.max_attempts


@dataclass(frozen=True)
class Decoded:
    """A decoded message: its type and model; ``model`` None for a type to ignore."""

    kind: str
    model: BaseModel | None


Decoder = Callable[[AbstractIncomingMessage], Decoded]
Handler = Callable[[Any, Delivery], Awaitable[None]]
# decodes one event of a batch from its type and parsed body (``Decoder.item``)
ItemDecoder = Callable[[str, dict[str, Any]], Decoded]


@dataclass
class _Source:
    """What a handler's outcome settles: a whole message, or one event of a batch."""

    message: AbstractIncomingMessage
    item: batch.Item | None = None
    failed: bool = False  # an event's retry or dead-letter copy could not be sent
    left: bool = False  # not handled: the consumer was stopping

    def copy(self, headers: dict[str, str | int]) -> aio_pika.Message:
        """A plain message of the event with ``headers`` added (retry, park, dead letter)."""
        message = self.message
        kept = {
            k: v
            for k, v in (message.headers or {}).items()
            if not k.startswith("x-death")
            and (self.item is None or k != batch.BATCH_HEADER)
        }
        first_key = {ROUTING_KEY_HEADER: original_routing_key(message) or ""}
        item = self.item
        return aio_pika.Message(
            body=message.body if item is None else item.json_body(),
            headers={**kept, **first_key, **headers},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id if item is None else item.message_id,
            correlation_id=message.correlation_id
            if item is None
            else item.correlation_id,
            type=message.type if item is None else item.type,
            user_id=message.user_id,
            app_id=message.app_id,
            timestamp=message.timestamp,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return f"malformed {exc.title}: {errors}"[:1000]
    return f"{type(exc).__name__}: {exc}"[:1000]


def original_routing_key(message: AbstractIncomingMessage) -> str | None:
    """The routing key the message was first published with, across retries."""
    kept = (message.headers or {}).get(ROUTING_KEY_HEADER)
    return str(kept) if kept else message.routing_key


def _attempt(headers: Mapping[str, object] | None) -> int:
    """The attempt header; anyone may publish one, so junk counts as a first attempt."""
    try:
        return max(1, int(str((headers or {}).get(ATTEMPT_HEADER, 1))))
    except ValueError:
        return 1


class Consumer:
    """Consumes one work queue and dispatches by decoded type to typed handlers."""

    def __init__(
        self,
        bus: Bus,
        spec: topology.QueueSpec,
        decoder: Decoder,
        handlers: Mapping[str, Handler],
        *,
        transient: tuple[type[Exception], ...] = (),
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.decoder = decoder
        self.handlers = dict(handlers)
        # the service's own "try again later" errors (e.g. a database that is busy or away)
        self.transient: tuple[type[Exception], ...] = (TransientError, *transient)
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight = 0
        self._max_attempts = len(bus.settings.retry_delays_s) + 1
        self._metrics: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(bus.settings.handlers)
        # stopping: what is not yet in a handler is left unacked (the broker gives it again
        # once the channel closes), so a stop waits for the handlers running, not for every
        # event of every batch in the prefetch
        self._stopping = False

    async def start(self) -> None:
        """Declare the queue (with its retry and dead-letter queues) and consume."""
        self._queue = await topology.declare_queue(
            self.bus.channel, self.spec, self.bus.settings
        )
        self._tag = await self._queue.consume(self.on_message)
        log.info("consuming", queue=self.spec.name)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking new messages and let the ones in hand finish (bounded).

        Whatever is still unacked after ``grace_s`` returns to the queue when the channel
        closes, and is redelivered: handlers are idempotent.
        """
        self._stopping = True
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)
            self._tag = None
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning(
                "stop_grace_exceeded", queue=self.spec.name, inflight=self._inflight
            )
        await self.bus.acks.drain()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Handle one delivery; never raises."""
        self._inflight += 1
        self._idle.clear()
        try:
            await self._on_message(message)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        attempt = _attempt(message.headers)
        with bound(
            queue=self.spec.name,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            attempt=attempt,
        ):
            started = time.perf_counter()
            if message.type == batch.BATCH_TYPE:  # its events take a slot each
                kind, outcome = await self._process_batch(_Source(message), attempt)
            else:
                async with self._slots:
                    if self._stopping:
                        return  # left unacked: given again once the channel closes
                    kind, outcome = await self._process(message, attempt)
            duration = time.perf_counter() - started
            self._observe(kind, outcome, duration)
            # one line per message costs more CPU than a hop's own work: debug, unless slow
            # (retries and dead letters log their own warning and error lines)
            (log.info if duration >= SLOW_S else log.debug)(
                "message_handled",
                type=kind,
                outcome=outcome,
                duration_ms=round(duration * 1000, 2),
            )

    def _observe(self, kind: str, outcome: str, duration: float) -> None:
        """Count the message; the labelled metric children are looked up once per label set."""
        children = self._metrics.get((kind, outcome))
        if children is None:
            children = (
                MESSAGES.labels(self.spec.name, kind, outcome),
                HANDLER_SECONDS.labels(self.spec.name, kind),
            )
            self._metrics[kind, outcome] = children
        children[0].inc()
        children[1].observe(duration)

    async def _process(
        self, message: AbstractIncomingMessage, attempt: int
    ) -> tuple[str, str]:
        source = _Source(message)
        try:
            decoded = self._decode(message)
        except (MessageRejectedError, ValidationError, ValueError) as exc:
            await self._dead_letter(source, _reason(exc))
            return "invalid", "dead_lettered"
        return decoded.kind, await self._dispatch(decoded, source, attempt)

    async def _dispatch(self, decoded: Decoded, source: _Source, attempt: int) -> str:
        """Run the handler of a decoded event and settle its outcome."""
        message, item = source.message, source.item
        if decoded.model is None:
            if item is None:
                self.bus.acks.ack(message)
            return "ignored"
        handler = self.handlers.get(decoded.kind)
        if handler is None:
            await self._dead_letter(source, f"no handler for type {decoded.kind!r} here")
            return "dead_lettered"
        delivery = Delivery(
            queue=self.spec.name,
            attempt=attempt,
            max_attempts=self._max_attempts,
            message_id=message.message_id if item is None else item.message_id,
            correlation_id=message.correlation_id
            if item is None
            else item.correlation_id,
            user_id=message.user_id,
            routing_key=original_routing_key(message),
            redelivered=bool(message.redelivered),
        )
        return await self._call(handler, decoded.model, delivery, source)

    async def _process_batch(self, source: _Source, attempt: int) -> tuple[str, str]:
        """Handle every event of a batch on its own; ack the message once all are settled."""
        message = source.message
        item_decoder: ItemDecoder | None = getattr(self.decoder, "item", None)
        if item_decoder is None:
            await self._dead_letter(source, f"{self.spec.name} takes no batches")
            return "invalid", "dead_lettered"
        try:
            self._decode_checks(message)
            items = batch.unpack(message.body)
        except MessageRejectedError as exc:
            await self._dead_letter(source, _reason(exc))
            return "invalid", "dead_lettered"
        sources = [_Source(message, item) for item in items]
        await asyncio.gather(
            *(self._batch_item(s, attempt, item_decoder) for s in sources)
        )
        if any(s.left for s in sources):
            return "batch", "left"  # unacked: given again (handled events are idempotent)
        if any(s.failed for s in sources):
            await self.bus.acks.reject(message)  # the queue's own dead-letter route
            return "batch", "rejected"
        self.bus.acks.ack(message)
        return "batch", "ok"

    async def _batch_item(
        self, source: _Source, attempt: int, decode: ItemDecoder
    ) -> None:
        item = source.item
        assert item is not None  # noqa: S101 (only batch items come here)
        async with self._slots:
            if self._stopping:
                source.left = True
                return
            await self._handle_item(source, item, attempt, decode)

    async def _handle_item(
        self, source: _Source, item: batch.Item, attempt: int, decode: ItemDecoder
    ) -> None:
        with bound(message_id=item.message_id, correlation_id=item.correlation_id):
            started = time.perf_counter()
            try:
                decoded = decode(item.type, item.body)
            except (MessageRejectedError, ValidationError, ValueError) as exc:
                await self._dead_letter(source, _reason(exc))
                kind, outcome = "invalid", "dead_lettered"
            else:
                kind = decoded.kind
                outcome = await self._dispatch(decoded, source, attempt)
            self._observe(kind, outcome, time.perf_counter() - started)

    def _decode(self, message: AbstractIncomingMessage) -> Decoded:
        self._decode_checks(message)
        return self.decoder(message)

    def _decode_checks(self, message: AbstractIncomingMessage) -> None:
        if len(message.body) > self.bus.settings.max_message_bytes:
            raise MessageRejectedError(
                f"message too large: {len(message.body)} bytes > "
                f"{self.bus.settings.max_message_bytes}"
            )
        if message.content_encoding not in (None, "", "identity", "utf-8"):
            raise MessageRejectedError(
                f"unsupported content encoding {message.content_encoding!r}"
            )

    async def _call(
        self,
        handler: Handler,
        model: BaseModel,
        delivery: Delivery,
        source: _Source,
    ) -> str:
        try:
            with durability.deferred() as syncs:
                await handler(model, delivery)
            await durability.settle(syncs)  # its writes on disk before its ack
        except self.transient as exc:
            if delivery.last_attempt:
                return await self._park_or_dead_letter(source, _reason(exc))
            await self._retry(source, delivery.attempt, _reason(exc))
            return "retried"
        except PermanentError as exc:
            await self._dead_letter(source, _reason(exc))
            return "dead_lettered"
        except Exception as exc:  # a bug must not kill the consumer; the message is kept
            log.exception("handler_crashed")
            await self._dead_letter(source, f"handler error: {_reason(exc)}")
            return "dead_lettered"
        if source.item is None:
            self.bus.acks.ack(
                source.message
            )  # sent with others at the end of this loop turn
        return "ok"

    async def _retry(self, source: _Source, attempt: int, reason: str) -> None:
        delays = self.bus.settings.retry_delays_s
        index = min(attempt - 1, len(delays) - 1)
        log.warning("retry_scheduled", reason=reason, delay_s=delays[index])
        copy = source.copy({ATTEMPT_HEADER: attempt + 1, REASON_HEADER: reason})
        await self._send_copy(source, self.spec.retry(delays[index]), copy)

    async def _park_or_dead_letter(self, source: _Source, reason: str) -> str:
        """Retries exhausted on a transient error: park it (comes back later), never drop it."""
        if not self.bus.settings.parked_ttl_s:
            await self._dead_letter(source, f"retries exhausted: {reason}")
            return "dead_lettered"
        log.warning("parked", reason=reason, ttl_s=self.bus.settings.parked_ttl_s)
        copy = source.copy({ATTEMPT_HEADER: 1, REASON_HEADER: f"parked: {reason}"})
        await self._send_copy(
            source, self.spec.parked(self.bus.settings.parked_ttl_s), copy
        )
        return "parked"

    async def _dead_letter(self, source: _Source, reason: str) -> None:
        log.error("dead_lettered", reason=reason, dlq=self.spec.dlq)
        copy = source.copy(
            {
                REASON_HEADER: reason,
                "x-dlaas-queue": self.spec.name,
                ROUTING_KEY_HEADER: original_routing_key(source.message) or "",
                "x-dlaas-dead-lettered-at": datetime.now(UTC).isoformat(),
            }
        )
        await self._send_copy(source, self.spec.dlq, copy, dead_letter=True)

    async def _send_copy(
        self,
        source: _Source,
        queue: str,
        copy: aio_pika.Message,
        *,
        dead_letter: bool = False,
    ) -> None:
        """Put the copy in ``queue``, then settle the message (a batch settles at its end).

        A retry that cannot be sent raises: the message stays unacked and comes back.
        """
        try:
            await self.bus.send_to_queue(queue, copy)
        except Exception:
            if not dead_letter:
                raise
            # the queue's own dead-letter route still keeps it
            log.exception("dead_letter_publish_failed")
            if source.item is not None:
                source.failed = True
            else:
                await self.bus.acks.reject(source.message)
            return
        if source.item is None:
            self.bus.acks.ack(source.message)
