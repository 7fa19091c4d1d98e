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

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.bus.metrics import HANDLER_SECONDS, MESSAGES
from dlaas.errors import MessageRejectedError, PermanentError, TransientError

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
        with structlog.contextvars.bound_contextvars(
            queue=self.spec.name,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            attempt=attempt,
        ):
            started = time.perf_counter()
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
        try:
            decoded = self._decode(message)
        except (MessageRejectedError, ValidationError, ValueError) as exc:
            await self._dead_letter(message, _reason(exc))
            return "invalid", "dead_lettered"
        if decoded.model is None:
            self.bus.acks.ack(message)
            return decoded.kind, "ignored"
        handler = self.handlers.get(decoded.kind)
        if handler is None:
            await self._dead_letter(message, f"no handler for type {decoded.kind!r} here")
            return decoded.kind, "dead_lettered"
        delivery = Delivery(
            queue=self.spec.name,
            attempt=attempt,
            max_attempts=self._max_attempts,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            user_id=message.user_id,
            routing_key=original_routing_key(message),
            redelivered=bool(message.redelivered),
        )
        return decoded.kind, await self._call(handler, decoded.model, delivery, message)

    def _decode(self, message: AbstractIncomingMessage) -> Decoded:
        if len(message.body) > self.bus.settings.max_message_bytes:
            raise MessageRejectedError(
                f"message too large: {len(message.body)} bytes > "
                f"{self.bus.settings.max_message_bytes}"
            )
        if message.content_encoding not in (None, "", "identity", "utf-8"):
            raise MessageRejectedError(
                f"unsupported content encoding {message.content_encoding!r}"
            )
        return self.decoder(message)

    async def _call(
        self,
        handler: Handler,
        model: BaseModel,
        delivery: Delivery,
        message: AbstractIncomingMessage,
    ) -> str:
        try:
            await handler(model, delivery)
        except self.transient as exc:
            if delivery.last_attempt:
                return await self._park_or_dead_letter(message, _reason(exc))
            await self._retry(message, delivery.attempt, _reason(exc))
            return "retried"
        except PermanentError as exc:
            await self._dead_letter(message, _reason(exc))
            return "dead_lettered"
        except Exception as exc:  # a bug must not kill the consumer; the message is kept
            log.exception("handler_crashed")
            await self._dead_letter(message, f"handler error: {_reason(exc)}")
            return "dead_lettered"
        self.bus.acks.ack(message)  # sent with others at the end of this loop turn
        return "ok"

    def _copy(
        self, message: AbstractIncomingMessage, headers: dict[str, str | int]
    ) -> aio_pika.Message:
        kept = {
            k: v
            for k, v in (message.headers or {}).items()
            if not k.startswith("x-death")
        }
        first_key = {ROUTING_KEY_HEADER: original_routing_key(message) or ""}
        return aio_pika.Message(
            body=message.body,
            headers={**kept, **first_key, **headers},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.type,
            user_id=message.user_id,
            app_id=message.app_id,
            timestamp=message.timestamp,
        )

    async def _retry(
        self, message: AbstractIncomingMessage, attempt: int, reason: str
    ) -> None:
        delays = self.bus.settings.retry_delays_s
        index = min(attempt - 1, len(delays) - 1)
        log.warning("retry_scheduled", reason=reason, delay_s=delays[index])
        copy = self._copy(message, {ATTEMPT_HEADER: attempt + 1, REASON_HEADER: reason})
        await self.bus.send_to_queue(self.spec.retry(delays[index]), copy)
        self.bus.acks.ack(message)

    async def _park_or_dead_letter(
        self, message: AbstractIncomingMessage, reason: str
    ) -> str:
        """Retries exhausted on a transient error: park it (comes back later), never drop it."""
        if not self.bus.settings.parked_ttl_s:
            await self._dead_letter(message, f"retries exhausted: {reason}")
            return "dead_lettered"
        log.warning("parked", reason=reason, ttl_s=self.bus.settings.parked_ttl_s)
        copy = self._copy(
            message, {ATTEMPT_HEADER: 1, REASON_HEADER: f"parked: {reason}"}
        )
        await self.bus.send_to_queue(
            self.spec.parked(self.bus.settings.parked_ttl_s), copy
        )
        self.bus.acks.ack(message)
        return "parked"

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.error("dead_lettered", reason=reason, dlq=self.spec.dlq)
        copy = self._copy(
            message,
            {
                REASON_HEADER: reason,
                "x-dlaas-queue": self.spec.name,
                ROUTING_KEY_HEADER: original_routing_key(message) or "",
                "x-dlaas-dead-lettered-at": datetime.now(UTC).isoformat(),
            },
        )
        try:
            await self.bus.send_to_queue(self.spec.dlq, copy)
        except Exception:  # the queue's own dead-letter route still keeps it
            log.exception("dead_letter_publish_failed")
            await self.bus.acks.reject(message)
            return
        self.bus.acks.ack(message)
