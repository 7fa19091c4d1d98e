"""One hop alone, fed from a full queue: our Python per message, without the stager's store.

The cache router (bus + a hash) against one bare aio-pika hop: the queue is filled first,
then the hop's process starts and drains it; the sink times what comes out. CPU per event
is counted between the 10th and the 90th percent of the output (start-up excluded). The
cache router's events come and leave in batches (filled through dlaas's Bus), as in the
pipeline: the sink counts a batch's events.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bench import hop
from bench.common import (
    USER,
    broker_pid,
    cpu_seconds,
    did_of,
    spawn_python,
    stop,
    throwaway_vhost,
    workspace,
)
from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.contracts import FileReady, FileStaged
from dlaas.settings import BusSettings
from dlaas_devstack import _proc
from dlaas_devstack.broker import Vhost

SINK = "bench.sink"
WINDOW = 200


@dataclass(frozen=True)
class HopResult:
    """What one hop did with a full queue."""

    name: str
    per_s: float
    cpu_ms: float  # the hop's process, per message
    broker_ms: float


Fill = Callable[[Vhost, int], Awaitable[str]]  # fills the hop's queue; returns the sink


async def _fill_cache_router(vhost: Vhost, n: int) -> str:
    settings = BusSettings.model_validate({"url": vhost.url()})
    bus = await Bus(settings, name="bench-fill").connect()
    await topology.declare_all(bus.channel, settings)
    await _sink(bus.channel, topology.EVENTS, FileReady.routing_key())
    request, run = uuid.uuid4(), uuid.uuid4().hex[:6]
    for start in range(0, n, WINDOW):
        await asyncio.gather(
            *(
                bus.publish(_staged(request, did_of(i, run)))
                for i in range(start, min(n, start + WINDOW))
            )
        )
    await bus.close()
    return SINK


def _staged(request: uuid.UUID, did: str) -> FileStaged:
    scope, _, name = did.partition(":")
    pfn = f"root://127.0.0.1:1094//data/notebook/{scope}/{name}"
    return FileStaged(
        request_id=request, user=USER, did=did, rse="NOTEBOOK", pfn=pfn, bytes=1024
    )


async def _fill_baseline(vhost: Vhost, n: int) -> str:
    async with await aio_pika.connect(vhost.url()) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await hop.declare(channel)
        run = uuid.uuid4().hex[:6]
        for start in range(0, n, WINDOW):
            bodies = [
                json.dumps({"did": did_of(i, run), "rse": "NOTEBOOK", "hop1": True})
                for i in range(start, min(n, start + WINDOW))
            ]
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            b.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ),
                        routing_key=hop.queue_name(2),
                    )
                    for b in bodies
                )
            )
    return hop.queue_name(3)


async def _sink(channel: AbstractChannel, exchange: str, key: str) -> None:
    queue = await channel.declare_queue(
        SINK, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange, key)


async def _drain(vhost: Vhost, child: _proc.Child, sink: str, n: int) -> HopResult:
    arrivals: list[float] = []
    marks: dict[int, tuple[float, float]] = {}
    beam = broker_pid() or 0
    done = asyncio.Event()
    connection = await aio_pika.connect(vhost.url())
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)

    async def on_message(message: AbstractIncomingMessage) -> None:
        # dlaas's hop sends the events of a moment in one message: count its events
        events = int(str((message.headers or {}).get(batch.BATCH_HEADER, 1)))
        before, now = len(arrivals), time.monotonic()
        arrivals.extend([now] * events)
        for mark in (n // 10, n * 9 // 10):
            if before < mark <= len(arrivals):
                marks[mark] = (cpu_seconds(child.pid), cpu_seconds(beam))
        if len(arrivals) >= n:
            done.set()
        await message.ack()

    await (await channel.get_queue(sink)).consume(on_message)
    await asyncio.wait_for(done.wait(), timeout=300)
    await connection.close()
    (cpu0, beam0), (cpu1, beam1) = marks[n // 10], marks[n * 9 // 10]
    count = n * 9 // 10 - n // 10
    elapsed = arrivals[n * 9 // 10 - 1] - arrivals[n // 10 - 1]
    return HopResult(
        child.name,
        count / elapsed,
        (cpu1 - cpu0) * 1000 / count,
        (beam1 - beam0) * 1000 / count,
    )


async def run_hop(name: str, n: int, overlay: Path | None) -> HopResult:
    """Fill, start the hop, drain; on a throwaway vhost."""
    with throwaway_vhost() as vhost, workspace() as workdir:
        if name == "baseline-hop":
            sink = await _fill_baseline(vhost, n)
            child = spawn_python(name, "bench.hop", [vhost.url(), "2"], workdir, {})
        else:
            sink = await _fill_cache_router(vhost, n)
            env = {"DLAAS_BUS__URL": vhost.url(), "DLAAS_LOG_JSON": "true"}
            env["DLAAS_CACHE__ENDPOINTS"] = "[]"
            if overlay is not None:
                env["PYTHONPATH"] = str(overlay)
            child = spawn_python(name, "bench.svc", ["cache_router"], workdir, env)
        try:
            return await _drain(vhost, child, sink, n)
        finally:
            stop([child])


async def compare(n: int, runs: int, overlay: Path | None) -> dict[str, list[HopResult]]:
    """Alternate the hops run by run."""
    names = [
        "baseline-hop",
        "cache_router",
        *(["cache_router-before"] if overlay else []),
    ]
    results: dict[str, list[HopResult]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            results[name].append(
                await run_hop(name, n, overlay if "before" in name else None)
            )
            print(f"  hop {name}: {results[name][-1].per_s:.0f} events/s", flush=True)
    return results


def print_table(results: dict[str, list[HopResult]]) -> None:
    """Markdown table of the one-hop comparison (medians)."""
    base = statistics.median(r.per_s for r in results["baseline-hop"])
    print("\n## One hop draining a full queue (medians)")
    print("| hop | events/s | vs bare hop | hop CPU ms/event | broker CPU ms/event |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        rate = statistics.median(r.per_s for r in runs)
        cpu = statistics.median(r.cpu_ms for r in runs)
        broker = statistics.median(r.broker_ms for r in runs)
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x | {cpu:.2f} | {broker:.2f} |")
