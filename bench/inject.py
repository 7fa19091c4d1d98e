"""Rucio's hermes, played back: ``transfer-done`` messages at a rate (0: as fast as confirmed).

Run as its own process: ``python -m bench.inject URL EXCHANGE RUN N RATE OUT``.
Writes the send time of every file (JSON list, index order) to OUT.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aio_pika

from bench.common import did_of, hermes_body

WINDOW = 200  # unconfirmed messages in flight, like a STOMP sender with receipts


async def inject(
    url: str, exchange_name: str, run: str, n: int, rate: float
) -> list[float]:
    """Publish ``n`` messages; their send times."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name)
    window = asyncio.Semaphore(WINDOW)
    sent: list[float] = [0.0] * n
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        try:
            now = time.time()
            sent[index] = now
            message = aio_pika.Message(
                hermes_body(did_of(index, run), now),
                headers={"event_type": "transfer-done"},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key="default")  # the instance
        finally:
            window.release()

    started = time.monotonic()
    for index in range(n):
        if rate > 0:
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        await window.acquire()
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    await connection.close()
    return sent


def main() -> None:
    """Entry point of the injector process."""
    url, exchange, run, n, rate, out = sys.argv[1:7]
    sent = asyncio.run(inject(url, exchange, run, int(n), float(rate)))
    Path(out).write_text(json.dumps(sent))
    print("injected", n, flush=True)


if __name__ == "__main__":
    main()
