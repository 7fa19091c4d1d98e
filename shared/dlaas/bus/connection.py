"""One robust connection per process, a confirming channel, persistent publishing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Self

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from dlaas.bus import topology
from dlaas.contracts.base import Event
from dlaas.settings import BusSettings

log = structlog.get_logger(__name__)

JSON = "application/json"


class Bus:
    """A process's link to RabbitMQ: publisher confirms on, every message persistent."""

    def __init__(
        self, settings: BusSettings, *, name: str, mandatory: bool = False
    ) -> None:
        self.settings = settings
        self.name = name
        self.mandatory = mandatory  # raise DeliveryError when no queue takes a message
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._on_close: list[Callable[[], Awaitable[None]]] = []

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Release ``callback``'s resource when the bus closes (stores, HTTP clients)."""
        self._on_close.append(callback)

    async def connect(self) -> Self:
        """Connect, open a confirming channel and declare the exchanges."""
        self._connection = await aio_pika.connect_robust(
            self.settings.url.get_secret_value(),
            client_properties={"connection_name": self.name},
        )
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=self.mandatory
        )
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        self._exchanges = await topology.declare_exchanges(self._channel)
        log.info("bus_connected", url=self.settings.display_url, service=self.name)
        return self

    @property
    def channel(self) -> AbstractChannel:
        """The channel (connect first)."""
        if self._channel is None:
            raise RuntimeError("Bus.connect() was not awaited")
        return self._channel

    @property
    def connected(self) -> bool:
        """Whether the connection is open now."""
        return self._connection is not None and not self._connection.is_closed

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        user_id: str | None = None,
        routing_key: str | None = None,
        exchange: str = topology.EVENTS,
    ) -> None:
        """Publish an event persistently and wait for the broker's confirm."""
        message = aio_pika.Message(
            body=event.model_dump_json().encode(),
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event.event_id),
            correlation_id=correlation_id,
            type=event.event_type,
            user_id=user_id,
            app_id=self.name,
        )
        await self._exchanges[exchange].publish(
            message,
            routing_key=routing_key or event.routing_key(),
            mandatory=self.mandatory,
        )

    async def send_to_queue(self, queue: str, message: aio_pika.Message) -> None:
        """Put a message straight into a queue (retry and dead-letter queues)."""
        await self.channel.default_exchange.publish(message, routing_key=queue)

    async def close(self) -> None:
        """Close the connection, then what was registered with :meth:`on_close` (idempotent)."""
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        while self._on_close:
            await self._on_close.pop()()
