"""Composition root of the cache router."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.service import main as run_service
from dlaas.contracts import CacheMiss, FileStaged
from dlaas_cache_router.adapters.pfc import PfcListener
from dlaas_cache_router.adapters.xrootd import XRootDCaches
from dlaas_cache_router.datasets import Datasets
from dlaas_cache_router.handlers import CacheRouter
from dlaas_cache_router.monitor import MissPublisher
from dlaas_cache_router.ports import CacheClient
from dlaas_cache_router.prober import Prober
from dlaas_cache_router.settings import CacheOptions, CacheRouterSettings
from dlaas_cache_router.warming import Warmer


async def build(
    bus: Bus, settings: CacheRouterSettings, *, client: CacheClient | None = None
) -> Sequence[Consumer]:
    """Wire the cache router: prober, miss listener, consumers (stopped with the bus)."""
    options = settings.cache
    sites = options.all_sites()
    caches = [cache.url for site in sites for cache in site.caches]
    client = client or XRootDCaches(
        probe_workers=max(len(set(caches)), 1), read_workers=options.warm.concurrency
    )
    bus.on_close(client.close)
    prober = Prober(caches, client, options.probe)
    await prober.start()
    bus.on_close(prober.stop)
    datasets = Datasets(options.warm.remember_s, options.warm.remember_files)
    router = CacheRouter(bus, sites, prober.alive, datasets)
    consumers = [
        Consumer(
            bus,
            topology.CACHE_ROUTER_FILES,
            decoders.events(FileStaged),
            {FileStaged.event_type: router.on_file_staged},
        )
    ]
    if options.warm.enabled:
        warmer = Warmer(datasets, client, options.warm)
        consumers.append(
            Consumer(
                bus,
                topology.CACHE_ROUTER_MISSES,
                decoders.events(CacheMiss),
                {CacheMiss.event_type: warmer.on_cache_miss},
            )
        )
    await _listen(bus, options)
    return consumers


async def _listen(bus: Bus, options: CacheOptions) -> None:
    """Feed the caches' monitoring stream onto the bus, when a UDP port is configured."""
    if options.monitor.udp_port is None:
        return
    publisher = MissPublisher(bus, options.monitor.max_pending)
    listener = PfcListener(
        options.monitor.udp_host, options.monitor.udp_port, publisher.offer
    )
    publisher.start()
    await listener.start()
    bus.on_close(publisher.stop)
    bus.on_close(listener.stop)


def main() -> None:
    """``dlaas-cache-router``: one cache router process."""
    settings = CacheRouterSettings()
    run_service("cache_router", settings, lambda bus: build(bus, settings))
