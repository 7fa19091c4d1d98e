"""Run the four services in this process against the real broker (fakes only at the edges)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.settings import BusSettings, ServiceSettings
from dlaas_cache_router.app import build as build_cache_router
from dlaas_cache_router.settings import CacheOptions, CacheRouterSettings
from dlaas_fuse_agent.app import build as build_fuse_agent
from dlaas_fuse_agent.settings import FuseAgentSettings, FuseOptions, MountSpec
from dlaas_notifier.app import build as build_notifier
from dlaas_stager.app import build as build_stager
from dlaas_stager.ports import Catalog
from dlaas_stager.settings import StagerOptions, StagerSettings

CACHE = "root://127.0.0.1:11095"


@dataclass
class Stack:
    """Where the in-process services keep their files; consumers held back on request."""

    storage: (
        Path  # what the NOTEBOOK mount shows: storage/<pfn path minus /data/notebook>
    )
    views: Path
    held: dict[str, Consumer] = field(default_factory=dict)

    async def release(self, queue: str) -> None:
        """Start a consumer that was held back."""
        await self.held.pop(queue).start()


@contextlib.asynccontextmanager
async def running_services(
    url: str,
    tmp: Path,
    catalog: Catalog,
    *,
    retry_delays: tuple[float, ...] = (0.2, 0.5),
    db_url: str | None = None,
    mount: Path | None = None,
    hold: Collection[str] = (),
    watchdog_s: float = 20.0,
    parked_ttl_s: float = 600,
    instances_file: Path | None = None,
) -> AsyncIterator[Stack]:
    """All four services consuming, each with its own connection, stopped on exit."""
    bus_settings = BusSettings.model_validate(
        {"url": url, "retry_delays_s": retry_delays, "parked_ttl_s": parked_ttl_s}
    )
    stack = Stack(mount or tmp / "mnt" / "notebook", tmp / "views")
    stager = StagerSettings(
        bus=bus_settings,
        instances_file=instances_file,
        stager=StagerOptions(
            db_url=db_url or f"sqlite+aiosqlite:///{tmp / 'stager.db'}",
            watchdog_interval_s=watchdog_s,
            watchdog_after_s=watchdog_s,
        ),
    )
    router = CacheRouterSettings(bus=bus_settings, cache=CacheOptions(endpoints=[CACHE]))
    fuse = FuseAgentSettings(
        bus=bus_settings,
        fuse=FuseOptions(
            mounts=[
                MountSpec(rse="NOTEBOOK", mount_path=stack.storage, path_begins_at=2)
            ],
            views_root=stack.views,
            check_timeout_s=2,
        ),
    )
    buses: list[Bus] = []
    consumers: list[Consumer] = []
    for name, builder in (
        ("stager", lambda b: build_stager(b, stager, catalog=catalog)),
        ("cache_router", lambda b: build_cache_router(b, router)),
        ("fuse_agent", lambda b: build_fuse_agent(b, fuse)),
        ("notifier", lambda b: build_notifier(b, ServiceSettings(bus=bus_settings))),
    ):
        bus = await Bus(bus_settings, name=name).connect()
        buses.append(bus)
        consumers += await builder(bus)
    for consumer in consumers:
        if consumer.spec.name in hold:
            stack.held[consumer.spec.name] = consumer
        else:
            await consumer.start()
    try:
        yield stack
    finally:
        for consumer in consumers:
            await consumer.stop(2)
        for bus in buses:
            await bus.close()


@contextlib.asynccontextmanager
async def one_service(
    bus_settings: BusSettings,
    name: str,
    build: Callable[[Bus], Awaitable[Sequence[Consumer]]],
) -> AsyncIterator[Bus]:
    """One service consuming in this process (stopped on exit); yields a client bus."""
    bus = await Bus(bus_settings, name=name).connect()
    try:
        consumers = await build(bus)
        for consumer in consumers:
            await consumer.start()
        client = await Bus(bus_settings, name="test").connect()
        try:
            yield client
        finally:
            await client.close()
            for consumer in consumers:
                await consumer.stop(2)
    finally:
        await bus.close()
