"""Composition root of the cache router."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.service import main as run_service
from dlaas.contracts import FileStaged
from dlaas_cache_router.handlers import CacheRouter
from dlaas_cache_router.settings import CacheRouterSettings


async def build(bus: Bus, settings: CacheRouterSettings) -> Sequence[Consumer]:
    """Wire the cache router's consumers."""
    caches = tuple(settings.cache.endpoints)
    router = CacheRouter(bus, healthy_caches=lambda: caches)
    return [
        Consumer(
            bus,
            topology.CACHE_ROUTER_FILES,
            decoders.events(FileStaged),
            {FileStaged.event_type: router.on_file_staged},
        ),
    ]


def main() -> None:
    """``dlaas-cache-router``: one cache router process."""
    settings = CacheRouterSettings()
    run_service("cache_router", settings, lambda bus: build(bus, settings))
