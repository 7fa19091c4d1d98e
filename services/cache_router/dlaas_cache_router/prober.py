"""Probes every cache periodically over the XRootD protocol; keeps the health book."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from dlaas.background import Background
from dlaas_cache_router.health import HealthBook
from dlaas_cache_router.ports import CacheClient
from dlaas_cache_router.settings import ProbeOptions

log = structlog.get_logger(__name__)


class Prober:
    """One round probes all caches at once; a round every ``interval_s``."""

    def __init__(
        self, caches: Sequence[str], client: CacheClient, options: ProbeOptions
    ) -> None:
        self.caches = tuple(dict.fromkeys(caches))
        self.client = client
        self.options = options
        self.book = HealthBook(options.failures_to_dead)
        self._task = Background()

    def alive(self, cache: str) -> bool:
        """Whether ``cache`` is taken as alive now."""
        return self.book.alive(cache)

    async def probe_all(self) -> None:
        """One round: probe every cache, fold the results in, log the changes."""
        reasons = await asyncio.gather(
            *(self.client.probe(cache, self.options.timeout_s) for cache in self.caches)
        )
        for cache, reason in zip(self.caches, reasons, strict=True):
            change = self.book.record(cache, ok=reason is None, reason=reason or "")
            if change == "died":
                log.warning("cache_dead", cache=cache, reason=reason)
            elif change == "revived":
                log.info("cache_alive", cache=cache)

    async def start(self) -> None:
        """Probe once (routing starts informed), then every ``interval_s`` in the background."""
        if not self.options.interval_s or not self.caches:
            return
        await self.probe_all()
        self._task.start(self._run, "cache-prober")

    async def stop(self) -> None:
        """Stop probing."""
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.options.interval_s)
            await self.probe_all()
