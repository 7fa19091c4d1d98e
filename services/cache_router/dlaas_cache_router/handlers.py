"""The cache router's handlers: route staged files; warm a dataset after a miss."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import FileReady, FileStaged
from dlaas_cache_router import domain
from dlaas_cache_router.datasets import Datasets, RoutedFile
from dlaas_cache_router.settings import CacheSite

log = structlog.get_logger(__name__)


def dataset_key(event: FileStaged) -> str:
    """The group a file is warmed with: its dataset, else the request that staged it."""
    return f"did:{event.dataset}" if event.dataset else f"request:{event.request_id}"


@dataclass
class CacheRouter:
    """Handlers with their dependencies."""

    bus: Bus
    sites: Sequence[CacheSite]
    alive: Callable[[str], bool]
    datasets: Datasets
    clock: Callable[[], float] = field(default=time.monotonic)

    async def on_file_staged(self, event: FileStaged, delivery: Delivery) -> None:
        """Give a staged file its XCache URL and announce it ready."""
        site = domain.site_for(event.rse, self.sites)
        chosen = domain.route(event.did, event.pfn, site, self.alive)
        if chosen.cache is not None:
            routed = RoutedFile(
                event.did,
                domain.lfn_path(event.pfn),
                chosen.url,
                event.bytes,
                event.adler32,
            )
            self.datasets.remember(dataset_key(event), routed, self.clock())
        ready = FileReady(
            **event.model_dump(exclude={"event_id", "occurred_at"}),
            cache_url=chosen.url,
            cache=chosen.cache,
        )
        await self.bus.publish(ready, correlation_id=delivery.correlation_id)
        log.info(
            "file_routed",
            did=event.did,
            request_id=str(event.request_id),
            user=event.user,
            cache=chosen.cache or "origin",
            site=site.name if site else None,
        )
