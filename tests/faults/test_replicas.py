"""Two replicas of every service consume at once; one is SIGKILLed or SIGTERMed mid-burst.

Nothing may be lost at the user's inbox and nothing told twice. Rucio is the free fake of
``bench.svc``; the stager's and the notifier's state are in PostgreSQL, shared by replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from bench.variants import SERVICES
from tests.broker import open_broker
from tests.faults.pipeline import (
    Burst,
    Inbox,
    Replicas,
    deadlocks,
    judge,
    postgres_database,
)
from tests.faults.report import FaultFigure, Record

pytestmark = [pytest.mark.faults, pytest.mark.broker]

FILES = 200
GRACE_S = 10.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two replicas of each service on a vhost of their own, for the whole module."""
    vhost = open_broker()
    try:
        with (
            postgres_database("fault_stager") as stager_db,
            postgres_database("fault_notifier") as notifier_db,
        ):
            running = Replicas(
                vhost.url(), tmp_path_factory.mktemp("replicas"), stager_db, notifier_db,
                grace_s=GRACE_S,
            )  # fmt: skip
            asyncio.run(running.prepare())
            try:
                running.start()
                yield running
            finally:
                running.stop()
    finally:
        vhost.delete()


async def _burst(replicas: Replicas) -> tuple[Burst, Inbox]:
    burst = Burst(FILES)
    await burst.record(replicas)
    return burst, Inbox(replicas.url, burst)


@pytest.mark.parametrize("service", SERVICES)
async def test_a_replica_killed_mid_burst_loses_nothing_and_tells_nothing_twice(
    replicas: Replicas, service: str, fault_report: Record
) -> None:
    burst, inbox = await _burst(replicas)
    victim = replicas.names(service)[0]
    deadlocks_before = deadlocks(replicas)
    async with inbox:
        await burst.inject(replicas.url)
        await inbox.wait_for(FILES // 5, timeout=120)
        killed_at = time.monotonic()
        replicas.kill(victim)
        restart_s = await asyncio.to_thread(replicas.restart, victim)
        await inbox.settle(timeout=180)
    told = inbox.told
    fault_report(
        FaultFigure(
            fault=f"SIGKILL {service} (1 of 2 replicas) mid-burst",
            sent=FILES,
            lost=told.lost(burst),
            duplicates=told.user_visible_duplicates(),
            repeats=told.duplicates() - told.user_visible_duplicates(),
            recovery_s=told.longest_gap(killed_at),
            note=f"killed at {FILES // 5}+ told; restarted in {restart_s:.1f} s",
        )
    )
    await judge(
        replicas, burst, told, deadlocks_before, notifier_cut=service == "notifier"
    )


@pytest.mark.parametrize("service", ["stager", "notifier"])
async def test_a_replica_terminated_mid_burst_finishes_its_work_and_exits_0(
    replicas: Replicas, service: str, fault_report: Record
) -> None:
    burst, inbox = await _burst(replicas)
    victim = replicas.names(service)[1]
    deadlocks_before = deadlocks(replicas)
    async with inbox:
        await burst.inject(replicas.url)
        await inbox.wait_for(FILES // 5, timeout=120)
        stopped_at = time.monotonic()
        code, took = await asyncio.to_thread(replicas.terminate, victim, GRACE_S + 5)
        log = replicas.log_text(victim)
        await asyncio.to_thread(replicas.restart, victim)
        await inbox.settle(timeout=180)
    told = inbox.told
    fault_report(
        FaultFigure(
            fault=f"SIGTERM {service} (1 of 2 replicas) mid-burst",
            sent=FILES,
            lost=told.lost(burst),
            duplicates=told.user_visible_duplicates(),
            repeats=told.duplicates() - told.user_visible_duplicates(),
            recovery_s=told.longest_gap(stopped_at),
            note=f"exit {code} after {took:.1f} s (grace {GRACE_S:.0f} s)",
        )
    )
    assert code == 0, log[-3000:]
    assert "service_stopped" in log
    await judge(replicas, burst, told, deadlocks_before)
