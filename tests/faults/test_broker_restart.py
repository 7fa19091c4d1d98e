"""RabbitMQ restarted in the middle of a burst: the services reconnect on their own.

The node is the suite's private one (the machine's broker is shared); queues are durable
quorum queues and messages persistent, so what was queued or unacked comes back with it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.variants import SERVICES
from tests.faults.pipeline import Burst, Inbox, Replicas, judge
from tests.faults.private_rabbit import PrivateRabbit
from tests.faults.report import FaultFigure, Record

pytestmark = [pytest.mark.faults]

FILES = 200


def _one_each(
    rabbit: PrivateRabbit, tmp_path: Path, services: tuple[str, ...] = SERVICES
) -> Replicas:
    """One process of each service on the private node, reconnecting every second."""
    return Replicas(
        rabbit.url(),
        tmp_path,
        stager_db=f"sqlite+aiosqlite:///{tmp_path / 'stager.db'}",
        notifier_db=f"sqlite+aiosqlite:///{tmp_path / 'notifier.db'}",
        replicas=1,
        extra_env={"DLAAS_BUS__RECONNECT_INTERVAL_S": "1"},
        services=services,
    )


async def test_a_broker_restarted_mid_burst_loses_nothing(
    private_rabbit: PrivateRabbit, tmp_path: Path, fault_report: Record
) -> None:
    replicas = _one_each(private_rabbit, tmp_path)
    await replicas.prepare()
    await asyncio.to_thread(replicas.start)
    try:
        burst = Burst(FILES)
        await burst.record(replicas)
        async with Inbox(replicas.url, burst) as inbox:
            await burst.inject(replicas.url)
            await inbox.wait_for(FILES // 5, timeout=120)
            down, up = await asyncio.to_thread(private_rabbit.restart)
            back_at = time.monotonic()
            await inbox.settle(timeout=180)
        alive = {name: child.alive() for name, child in replicas.children.items()}
        logs = {name: replicas.log_text(name) for name in replicas.children}
    finally:
        await asyncio.to_thread(replicas.stop)
    told = inbox.told
    after = [t for t in told.arrivals if t >= back_at]
    fault_report(
        FaultFigure(
            fault="RabbitMQ node restarted mid-burst (1 replica each)",
            sent=FILES,
            lost=told.lost(burst),
            duplicates=told.user_visible_duplicates(),
            repeats=told.duplicates() - told.user_visible_duplicates(),
            recovery_s=(min(after) - back_at) if after else None,
            note=f"node down {down:.1f} s, up again in {up:.1f} s; recovery: from the "
            "node up to the next file told",
        )
    )
    assert all(alive.values()), alive
    for name, text in logs.items():
        assert "bus_reconnected" in text, name
    await judge(replicas, burst, told, notifier_cut=True)


async def test_services_stop_cleanly_on_sigterm_while_the_broker_is_down(
    private_rabbit: PrivateRabbit, tmp_path: Path, fault_report: Record
) -> None:
    replicas = _one_each(private_rabbit, tmp_path, services=("stager", "notifier"))
    await replicas.prepare()
    await asyncio.to_thread(replicas.start)
    exits: dict[str, tuple[int | None, float]] = {}
    try:
        await asyncio.to_thread(private_rabbit.stop)
        for name in replicas.children:
            exits[name] = await asyncio.to_thread(replicas.terminate, name, 20)
    finally:
        await asyncio.to_thread(replicas.stop)
        await asyncio.to_thread(private_rabbit.start)
    slowest = max(took for _, took in exits.values())
    fault_report(
        FaultFigure(
            fault="SIGTERM while RabbitMQ is down (stager, notifier)",
            sent=0,
            lost=0,
            duplicates=0,
            note=f"exit codes {sorted({code for code, _ in exits.values()}, key=str)}, "
            f"slowest {slowest:.1f} s (grace 10 s)",
        )
    )
    assert all(code == 0 for code, _ in exits.values()), exits
