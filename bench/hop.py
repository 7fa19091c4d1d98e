"""The baseline: one hop as a bare aio-pika consumer that parses, forwards, then acks.

``python -m bench.hop URL INDEX``: consumes ``bench.h<INDEX>``, publishes to the next hop
(persistent, confirmed), awaits that confirm, then acks: one message at a time per delivery.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

EXCHANGE = "bench"
HOPS = 4
PREFETCH = 50


def queue_name(index: int) -> str:
    """Queue of hop ``index`` (1..4); ``HOPS + 1`` is the sink."""
    return f"bench.h{index}"


async def declare(channel: AbstractChannel) -> AbstractExchange:
    """The baseline's topology: a topic exchange, one quorum queue per hop and the sink."""
    exchange = await channel.declare_exchange(
        EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    hermes = await channel.declare_exchange(
        "rucio.hermes", aio_pika.ExchangeType.TOPIC, durable=True
    )
    for index in range(1, HOPS + 2):
        queue = await channel.declare_queue(
            queue_name(index), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, queue_name(index))
        if index == 1:
            await queue.bind(hermes, "#")
    return exchange


def transform(index: int, body: bytes) -> bytes:
    """Parse and forward: hop 1 reads Rucio's envelope, later hops add one field."""
    data = json.loads(body)
    if index == 1:
        payload = data["payload"]
        data = {
            "did": f"{payload['scope']}:{payload['name']}",
            "rse": payload["dst-rse"],
            "bytes": payload["bytes"],
        }
    data[f"hop{index}"] = True
    return json.dumps(data).encode()


async def serve(url: str, index: int) -> None:
    """Consume until SIGTERM."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=PREFETCH)
    exchange = await declare(channel)
    queue = await channel.get_queue(queue_name(index))

    async def on_message(message: AbstractIncomingMessage) -> None:
        body = transform(index, message.body)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=queue_name(index + 1),
        )
        await message.ack()

    await queue.consume(on_message)
    print("service_started", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
