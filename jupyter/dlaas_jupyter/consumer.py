"""Consume the user's notifications from ``dlaas.notify`` into a :class:`Relay`, reconnecting.

The queue is exclusive and server-named (``amq.gen-*``, which a user may declare), bound with
the user's own routing keys ``user.<user>.*`` (which RabbitMQ's topic permissions let only that
user bind). It lives as long as the connection: what arrives while JupyterLab's server is down
waits in the user's durable inbox for ``dlaas inbox``, which this extension leaves alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPException

from dlaas.bus import batch, topology
from dlaas.errors import MessageRejectedError
from dlaas.settings import BusSettings
from dlaas_jupyter.relay import Relay

RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class LinkLostError(ConnectionError):
    """The broker closed the channel or the connection under the consumer."""


def binding_key(user: str) -> str:
    """The routing keys of every notification of ``user`` (one word per request id)."""
    return topology.notify_routing_key(user, "*")


async def consume_once(relay: Relay, settings: BusSettings) -> None:
    """Connect, bind a private queue and feed ``relay`` until the link breaks."""
    connection = await aio_pika.connect(
        settings.url.get_secret_value(),
        client_properties={"connection_name": f"dlaas-jupyter:{relay.user}"},
        timeout=15,
    )
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        # Looked up, not declared, as every dlaas client does: a user has no configure right
        # on the exchanges (it would let them delete one).
        exchange = await channel.get_exchange(topology.NOTIFY)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, binding_key(relay.user))
        relay.set_status(connected=True)
        async with queue.iterator() as messages:
            async for message in messages:
                # Acked whatever it holds: a body we cannot read will not read better later.
                async with message.process(ignore_processed=True):
                    for body in _bodies(message):
                        relay.receive(body)
    raise LinkLostError("the broker closed the connection")


def _bodies(message: AbstractIncomingMessage) -> list[bytes]:
    """The notifications a message holds: several that happened together share one."""
    try:
        return [body for _, body in batch.unbatch(message)]
    except MessageRejectedError:
        return [message.body]  # the relay drops what it cannot read


async def consume(
    relay: Relay,
    settings: BusSettings,
    log: logging.Logger,
    *,
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
) -> None:
    """Run :func:`consume_once` forever, backing off while the broker is unreachable."""
    failures = 0
    while True:
        try:
            await consume_once(relay, settings)
        except (OSError, AMQPException, TimeoutError) as exc:
            # A link that worked is retried almost at once; one that never came up, ever slower.
            failures = 0 if relay.status.connected else failures + 1
            error = f"{type(exc).__name__}: {exc}".strip()
            relay.set_status(connected=False, error=error)
            delay = (
                retry_delays_s[min(failures, len(retry_delays_s)) - 1]
                if failures
                else 0.5
            )
            log.warning(
                "dlaas: notifications from %s: %s; retrying in %.0f s",
                settings.display_url,
                error,
                delay,
            )
            await asyncio.sleep(delay)
