"""A backlog drained: N hermes ``transfer-done`` queued before the services start.

The first queue (the stager's ``stager.hermes``; the baseline's first hop) is filled with
``transfer-done`` for N files the stager tracks, confirmed by the broker, while no service
runs. Then the services start and drain it: time from their start to the last user
notification, the rate between 10 % and 90 % of the arrivals, and each process's peak RSS
(VmHWM from /proc, read before it stops). Run at two sizes (N/10 and N), the peak RSS shows
whether memory follows the backlog or only the prefetch (unacked messages per consumer).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aio_pika

from bench.common import (
    broker_pid,
    cpu_seconds,
    did_of,
    hermes_body,
    load_average,
    stop,
    throwaway_vhost,
    wait_logged,
    workspace,
)
from bench.pipeline import open_sink
from bench.variants import Baseline, Dlaas, Variant
from dlaas.bus import topology

WINDOW = 500  # unconfirmed messages in flight while filling
STALL_S = 30.0  # nothing arrived for this long: the rest is counted lost


@dataclass(frozen=True)
class BacklogResult:
    """What draining one backlog measured."""

    variant: str
    files: int
    fill_s: float  # publishing the backlog, confirmed
    startup_s: float  # spawned -> every process logged service_started
    drain_s: float  # spawned -> last notification (start-up included)
    rate: float  # files/s between 10 % and 90 % of the arrivals
    lost: int
    rss_peak_mb: dict[str, float]  # VmHWM of each process
    rss_end_mb: dict[str, float]  # VmRSS of each process once drained
    cpu_ms: dict[str, float]  # CPU per file of each process after its start-up
    broker_rss_mb: tuple[
        float, float, float
    ]  # beam.smp VmRSS: before fill, filled, drained


def _status_mb(pid: int | None, key: str) -> float:
    if pid is None:
        return float("nan")
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fill(url: str, run: str, n: int) -> float:
    """Publish ``n`` transfer-done as hermes does, to ``rucio.hermes``; seconds taken."""
    started = time.monotonic()
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.HERMES)
    for start in range(0, n, WINDOW):
        now = time.time()
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        hermes_body(did_of(i, run), now),
                        headers={"event_type": "transfer-done"},
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="default",
                )
                for i in range(start, min(n, start + WINDOW))
            )
        )
    await connection.close()
    return time.monotonic() - started


async def drain_once(variant: Variant, n: int) -> BacklogResult:
    """Fill, then start ``variant`` and wait until every file reached the user."""
    run = uuid.uuid4().hex[:6]
    beam = broker_pid()
    with throwaway_vhost() as vhost, workspace() as workdir:
        # declares every queue: the first one fills while nobody consumes it
        sink = await variant.prepare(vhost, workdir, run, n)
        broker_before = _status_mb(beam, "VmRSS")
        fill_s = await fill(vhost.url(), run, n)
        broker_filled = _status_mb(beam, "VmRSS")
        at_sink = await open_sink(vhost, sink, variant, n)
        received = at_sink.received
        started = time.time()
        children = variant.spawn(vhost, workdir)
        try:
            for child in children:
                wait_logged(child, "service_started", timeout=60)
            startup_s = time.time() - started
            pids = {child.name: child.pid for child in children}
            cpu_started = {name: cpu_seconds(pid) for name, pid in pids.items()}
            await _until_done_or_stalled(at_sink.done, received)
            peak = {name: _status_mb(pid, "VmHWM") for name, pid in pids.items()}
            end = {name: _status_mb(pid, "VmRSS") for name, pid in pids.items()}
            cpu = {
                name: (cpu_seconds(pid) - cpu_started[name]) * 1000 / n
                for name, pid in pids.items()
            }
        finally:
            await at_sink.connection.close()
            stop(children)
        broker_drained = _status_mb(beam, "VmRSS")
    arrivals = sorted(received.values())
    rate = 0.0
    if len(arrivals) >= 10:
        low, high = arrivals[len(arrivals) // 10], arrivals[len(arrivals) * 9 // 10]
        rate = (len(arrivals) * 8 // 10) / max(high - low, 1e-9)
    return BacklogResult(
        variant=variant.name,
        files=n,
        fill_s=fill_s,
        startup_s=startup_s,
        drain_s=(arrivals[-1] - started) if arrivals else float("nan"),
        rate=rate,
        lost=n - len(received),
        rss_peak_mb=peak,
        rss_end_mb=end,
        cpu_ms=cpu,
        broker_rss_mb=(broker_before, broker_filled, broker_drained),
    )


async def _until_done_or_stalled(done: asyncio.Event, received: dict[str, float]) -> None:
    last, count = time.monotonic(), 0
    while not done.is_set():
        await asyncio.sleep(0.5)
        if len(received) != count:
            last, count = time.monotonic(), len(received)
        elif time.monotonic() - last > STALL_S:
            return


async def compare(n: int) -> list[BacklogResult]:
    """The baseline and dlaas, each draining a backlog of n/10 and of n files."""
    results = []
    for size in (max(1, n // 10), n):
        for variant in (Baseline(), Dlaas()):
            result = await drain_once(variant, size)
            results.append(result)
            print(
                f"  backlog {variant.name} {size} files: drained in "
                f"{result.drain_s:.1f} s, {result.lost} lost (load {load_average()})",
                flush=True,
            )
    return results


def print_table(results: list[BacklogResult]) -> None:
    """Drain time and memory of every process, per backlog size."""
    print("\n## Backlog queued before the services start, then drained")
    print(
        "| pipeline | backlog | fill s | start-up s | drain s | files/s (10-90 %) | lost "
        "| peak RSS MB (VmHWM) per process | RSS MB once drained | broker RSS MB: "
        "empty / filled / drained |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        peak = ", ".join(f"{k} {v:.0f}" for k, v in r.rss_peak_mb.items())
        end = ", ".join(f"{k} {v:.0f}" for k, v in r.rss_end_mb.items())
        broker = " / ".join(f"{v:.0f}" for v in r.broker_rss_mb)
        print(
            f"| {r.variant} | {r.files} | {r.fill_s:.1f} | {r.startup_s:.1f} | "
            f"{r.drain_s:.1f} | "
            f"{r.rate:.0f} | {r.lost} | {peak} | {end} | {broker} |"
        )
    print("\nCPU ms per file of each process while draining (after its start-up):")
    for r in results:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms.items())
        print(f"- {r.variant}, {r.files} files: {parts}")
