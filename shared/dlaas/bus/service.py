"""Run one service process: connect, consume, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
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
STOP_MARGIN_S = 2.0  # beyond the grace period: cancelling and acking take a round trip


async def serve(name: str, settings: ServiceSettings, build: Build) -> None:
    """Consume until SIGTERM or SIGINT, then stop consuming and let in-flight work finish."""
    bus = await Bus(settings.bus, name=name).connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumers = await build(bus)
    # what start-up made (modules, schemas, compiled statements: ~100,000 objects) is never
    # scanned by the collector again; a full collection walking it took 70-100 ms here,
    # now and then, in the middle of a message
    gc.collect()
    gc.freeze()
    # a message makes and drops hundreds of objects (frames, futures, models): collecting the
    # young ones every 50,000 allocations instead of 700 lets refcounting free most of them
    # first, so fewer are scanned and fewer reach the older generations
    gc.set_threshold(50_000, 20, 100)
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
        await _stop_consuming(bus, consumers, settings.grace_s)
        await bus.close()
        log.info("service_stopped", service=name)


async def _stop_consuming(
    bus: Bus, consumers: Sequence[Consumer], grace_s: float
) -> None:
    """Cancel the consumers and let messages in hand finish, within the grace period.

    With the broker away there is nothing to cancel and nothing to ack: it has put back every
    unacked message already, and waiting for it would outlast the pod's grace period.
    """
    if not bus.connected:
        log.warning("stopping_without_broker")
        return
    stopping = asyncio.gather(*(consumer.stop(grace_s) for consumer in consumers))
    try:
        await asyncio.wait_for(stopping, grace_s + STOP_MARGIN_S)
    except TimeoutError:  # the connection went away while stopping
        log.warning("stop_incomplete", grace_s=grace_s)


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
