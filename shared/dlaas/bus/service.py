"""Run one service process: connect, consume, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence

import structlog

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.http import HealthServer
from dlaas.logging import configure_logging
from dlaas.settings import ServiceSettings

log = structlog.get_logger(__name__)

Build = Callable[[Bus], Awaitable[Sequence[Consumer]]]


async def serve(name: str, settings: ServiceSettings, build: Build) -> None:
    """Consume until SIGTERM or SIGINT, then stop consuming and let in-flight work finish."""
    bus = await Bus(settings.bus, name=name).connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumers = await build(bus)
    for consumer in consumers:
        await consumer.start()
    health = await _health(settings, bus)
    log.info("service_started", service=name, http_port=health.port if health else None)
    try:
        await stop.wait()
    finally:
        log.info("service_stopping", service=name)
        if health is not None:
            await health.stop()
        await asyncio.gather(*(consumer.stop(settings.grace_s) for consumer in consumers))
        await bus.close()
        log.info("service_stopped", service=name)


async def _health(settings: ServiceSettings, bus: Bus) -> HealthServer | None:
    if settings.http_port is None:
        return None

    async def broker() -> bool:
        return bus.connected

    checks = {"broker": broker, **bus.checks}
    server = HealthServer(settings.http_host, settings.http_port, checks)
    await server.start()
    return server


def main(name: str, settings: ServiceSettings, build: Build) -> None:
    """Console entry point of a service."""
    configure_logging(json=settings.log_json, level=settings.log_level)
    asyncio.run(serve(name, settings, build))
