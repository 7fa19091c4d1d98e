"""Misses seen on the caches' monitoring stream, published as ``cache-miss`` events.

The stream is UDP (lossy by nature) and misses are hints: a bounded queue decouples the
datagram callback from the broker, and when it is full or the broker refuses, a miss is
dropped with a log line rather than blocking or growing without bound.
"""

from __future__ import annotations

import asyncio

import structlog
from aio_pika.exceptions import AMQPError

from dlaas.background import Background
from dlaas.bus.connection import Bus
from dlaas.contracts import CacheMiss
from dlaas_cache_router.ports import Miss

log = structlog.get_logger(__name__)


class MissPublisher:
    """Takes misses from the listener (sync) and publishes them (async, in order)."""

    def __init__(self, bus: Bus, max_pending: int) -> None:
        self.bus = bus
        self._pending: asyncio.Queue[Miss] = asyncio.Queue(max_pending)
        self._task = Background()
        self.published = 0
        self.dropped = 0

    def offer(self, miss: Miss) -> None:
        """Queue a miss for publishing; drop it when the queue is full."""
        try:
            self._pending.put_nowait(miss)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("cache_miss_dropped", cache=miss.cache, path=miss.path)

    def start(self) -> None:
        """Start publishing."""
        self._task.start(self._run, "cache-miss-publisher")

    async def stop(self) -> None:
        """Stop publishing (what is still queued is dropped)."""
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            miss = await self._pending.get()
            event = CacheMiss(
                cache=miss.cache, lfn=miss.path, bytes_missed=miss.bytes_missed
            )
            try:
                await self.bus.publish(event)
            except (AMQPError, ConnectionError, RuntimeError) as exc:
                self.dropped += 1
                log.warning("cache_miss_not_published", path=miss.path, error=str(exc))
                continue
            self.published += 1
            log.info("cache_miss_seen", cache=miss.cache, path=miss.path)
