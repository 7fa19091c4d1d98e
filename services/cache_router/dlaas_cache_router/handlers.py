"""The cache router's handlers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import FileReady, FileStaged
from dlaas_cache_router import domain

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CacheRouter:
    """Handlers with their dependencies."""

    bus: Bus
    healthy_caches: Callable[[], Sequence[str]]

    async def on_file_staged(self, event: FileStaged, delivery: Delivery) -> None:
        """Give a staged file its XCache URL and announce it ready."""
        cache = domain.choose_cache(event.did, self.healthy_caches())
        ready = FileReady(
            **event.model_dump(exclude={"event_id", "occurred_at"}),
            cache_url=domain.cache_url(event.pfn, cache),
            cache=cache,
        )
        await self.bus.publish(ready, correlation_id=delivery.correlation_id)
        log.info(
            "file_routed",
            did=event.did,
            request_id=str(event.request_id),
            user=event.user,
            cache=cache or "origin",
        )
