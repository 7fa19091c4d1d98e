"""One run of a pipeline: start it, play hermes traffic through it, time and cost each file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from bench.common import (
    Quantiles,
    broker_pid,
    cpu_seconds,
    did_of,
    spawn_python,
    stop,
    throwaway_vhost,
    wait_logged,
    workspace,
)
from bench.profile import sampling
from bench.variants import Variant
from dlaas.bus import batch, topology
from dlaas_devstack import _proc
from dlaas_devstack.broker import Vhost

POLL_S = 10.0
STALL_S = 20.0


@dataclass(frozen=True)
class RunResult:
    """What one run measured."""

    variant: str
    files: int
    offered: float  # events/s offered; 0: as fast as the broker confirms
    throughput: float  # files/s reaching the user, between 10 % and 90 % of them
    latency: Quantiles  # transfer-done published -> the user's notification received
    polled: Quantiles  # the same seen by a client polling every POLL_S
    cpu_ms: dict[str, float]  # CPU per file of each process and of the broker
    lost: int = 0  # files whose notification never came (dead-lettered on the way)
    # with a spy on dlaas's events: how long each hop took (ms), "hermes -> file-staged"...
    hops: dict[str, Quantiles] = field(default_factory=dict)


async def run_once(
    variant: Variant,
    n: int,
    rate: float,
    *,
    profile: Path | None = None,
    hops: bool = False,
) -> RunResult:
    """Run ``n`` files through ``variant`` on a throwaway vhost.

    ``hops``: also time each hop of dlaas's pipeline (a spy on its events exchange; costs
    the broker a delivery per event, so the end-to-end figures of such a run are a little
    worse).
    """
    run = uuid.uuid4().hex[:6]
    with throwaway_vhost() as vhost, workspace() as workdir:
        sink_queue = await variant.prepare(vhost, workdir, run, n)
        children = variant.spawn(vhost, workdir)
        try:
            for child in children:
                wait_logged(child, "service_started")
            pids = {child.name: child.pid for child in children}
            spy = await open_spy(vhost) if hops else None
            try:
                with sampling(pids, profile):
                    received, cpu = await _drive(
                        variant,
                        vhost,
                        workdir,
                        sink_queue=sink_queue,
                        pids=pids,
                        load=(run, n, rate),
                    )
            finally:
                if spy is not None:
                    await spy.connection.close()
        finally:
            stop(children)
        sent = json.loads((workdir / "sent.json").read_text())
    dids = [did_of(i, run) for i in range(n)]
    arrived = [received.get(did) for did in dids]
    result = _result(variant.name, n, rate, sent=sent, received=arrived, cpu=cpu)
    if spy is None:
        return result
    seen = {**spy.seen, "notification": received}
    return dataclasses.replace(result, hops=_hops(dids, sent, seen))


async def _drive(
    variant: Variant,
    vhost: Vhost,
    workdir: Path,
    *,
    sink_queue: str,
    pids: dict[str, int],
    load: tuple[str, int, float],
) -> tuple[dict[str, float], dict[str, float]]:
    run, n, rate = load
    sink = await open_sink(vhost, sink_queue, variant, n)
    before = _cpu(pids)
    args = [
        vhost.url(),
        "rucio.hermes",
        run,
        str(n),
        str(rate),
        str(workdir / "sent.json"),
    ]
    injector = spawn_python("inject", "bench.inject", args, workdir, {})
    try:
        await _until_done_or_stalled(sink.done, sink.received, injector)
    finally:
        await sink.connection.close()
        await asyncio.to_thread(injector.popen.wait, 60)
    return sink.received, _per_file(before, _cpu(pids), n)


@dataclass
class Sink:
    """The user's end of a pipeline: when each file was first reported to it."""

    connection: AbstractConnection
    received: dict[str, float]  # DID -> arrival (time.time())
    done: asyncio.Event  # set once ``n`` files arrived


async def open_sink(vhost: Vhost, queue: str, variant: Variant, n: int) -> Sink:
    """Consume ``queue`` (the sink) on a connection of its own (close it after)."""
    sink = Sink(await aio_pika.connect(vhost.url()), {}, asyncio.Event())
    channel = await sink.connection.channel()
    await channel.set_qos(prefetch_count=200)

    async def on_message(message: AbstractIncomingMessage) -> None:
        for _, body in batch.unbatch(message):  # several files may share one
            did = variant.did_in(body)
            if did is not None:
                sink.received.setdefault(did, time.time())
        if len(sink.received) >= n:
            sink.done.set()
        await message.ack()

    await (await channel.get_queue(queue)).consume(on_message)
    return sink


HOPS = ("file-staged", "file-ready", "file-visible", "notification")


@dataclass
class Spy:
    """When each of dlaas's per-file events was first published, per type and DID."""

    connection: AbstractConnection
    seen: dict[str, dict[str, float]]


async def open_spy(vhost: Vhost) -> Spy:
    """Watch every event on dlaas's events exchange (a queue of its own, auto-deleted)."""
    spy = Spy(await aio_pika.connect(vhost.url()), {kind: {} for kind in HOPS})
    channel = await spy.connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.EVENTS, "#")

    async def on_message(message: AbstractIncomingMessage) -> None:
        now = time.time()
        for kind, body in batch.unbatch(message):
            seen = spy.seen.get((kind or "").rpartition(".v")[0])
            if seen is not None:
                seen.setdefault(json.loads(body)["did"], now)

    await queue.consume(on_message, no_ack=True)
    return spy


def _hops(
    dids: list[str], sent: list[float], seen: dict[str, dict[str, float]]
) -> dict[str, Quantiles]:
    """Each hop's time (ms) for the files seen at both of its ends."""
    times = {}
    before, starts = "hermes", dict(zip(dids, sent, strict=True))
    for kind in HOPS:
        ends = seen[kind]
        spans = [ends[d] - starts[d] for d in dids if d in starts and d in ends]
        if spans:
            times[f"{before} -> {kind}"] = Quantiles.of(spans)
        before, starts = kind, ends
    return times


async def _until_done_or_stalled(
    done: asyncio.Event, received: dict[str, float], injector: _proc.Child
) -> None:
    """Wait for every file, or until nothing arrived for STALL_S after the injection."""
    last, count = time.monotonic(), 0
    while not done.is_set():
        await asyncio.sleep(0.5)
        if len(received) != count or injector.alive():
            last, count = time.monotonic(), len(received)
        elif time.monotonic() - last > STALL_S:
            return  # the rest is lost (dead-lettered somewhere): counted, not waited for


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    beam = broker_pid()
    if beam is not None:
        cpu["broker"] = cpu_seconds(beam)
    return cpu


def _per_file(
    before: dict[str, float], after: dict[str, float], n: int
) -> dict[str, float]:
    return {name: (after[name] - before[name]) * 1000 / n for name in after}


def _result(
    variant: str,
    n: int,
    rate: float,
    *,
    sent: list[float],
    received: list[float | None],
    cpu: dict[str, float],
) -> RunResult:
    pairs = [(s, r) for s, r in zip(sent, received, strict=True) if r is not None]
    arrivals = sorted(r for _, r in pairs)
    low, high = arrivals[len(arrivals) // 10], arrivals[len(arrivals) * 9 // 10]
    latencies = [r - s for s, r in pairs]
    # the alternative: clients polling Rucio every POLL_S (each at its own phase) see
    # the file at their first poll after transfer-done
    rng = random.Random(n)
    polled = []
    for s, _ in pairs:
        phase = rng.uniform(0, POLL_S)
        polled.append(phase + POLL_S * (1 + (s - phase) // POLL_S) - s)
    return RunResult(
        variant=variant,
        files=n,
        offered=rate,
        throughput=(len(arrivals) * 8 // 10) / max(high - low, 1e-9),
        lost=n - len(pairs),
        latency=Quantiles.of(latencies),
        polled=Quantiles.of(polled),
        cpu_ms=cpu,
    )
