"""The cache router's handlers: route staged files; warm a dataset after a miss."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from aio_pika.exceptions import DeliveryError

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import FileReady, FileStaged
from dlaas.errors import TransientError
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
        await self._publish(ready, delivery)
        log.info(
            "file_routed",
            did=event.did,
            request_id=str(event.request_id),
            user=event.user,
            cache=chosen.cache or "origin",
            site=site.name if site else None,
            node=event.node,
        )

    async def _publish(self, ready: FileReady, delivery: Delivery) -> None:
        """To the fuse agent of the user's node; to any agent when none ever ran there."""
        if ready.node is not None:
            try:
                await self.bus.publish(
                    ready,
                    correlation_id=delivery.correlation_id,
                    routing_key=topology.file_ready_routing_key(ready.node),
                    mandatory=True,
                )
            except DeliveryError:
                log.warning("no_agent_on_node", node=ready.node, did=ready.did)
            else:
                return
        try:
            await self.bus.publish(
                ready, correlation_id=delivery.correlation_id, mandatory=True
            )
        except DeliveryError as exc:  # no fuse agent queue yet: keep it, try again
            raise TransientError("no fuse agent queue takes file-ready yet") from exc
