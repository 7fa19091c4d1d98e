"""Hermes traffic replayed out of order and twice, with the replay tool (dlaas_devstack.replay).

A real burst: the real Rucio's hermes, over STOMP, while the real stager stages a dataset. The
stager's hermes queue is held back while the tool records; the live copies are then purged, so
the stager learns about the transfers only from the replay: every recorded message twice, all
of them shuffled. The user must be told each file once and the request completed once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aio_pika
import pytest

from dlaas.bus import topology
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, rse_dir
from dlaas_devstack.replay import Recorded, Recorder, arrange, load, replay, save
from dlaas_devstack.rucio import RucioStack
from tests.faults.report import FaultFigure, Record
from tests.faults.test_rucio_faults import (
    SETTLE_S,
    catalog,
    datasets,
    expected_files,
    stage,
    telling,
)
from tests.services import running_services

pytestmark = [pytest.mark.faults, pytest.mark.broker, pytest.mark.timeout(300)]

RETRIES = (0.5, 1.0, 2.0)


def _burst_over(dataset: str, files: set[str]) -> Callable[[Sequence[Recorded]], bool]:
    """Whether the records hold the dataset's rule_ok and every file's transfer-done."""

    def over(records: Sequence[Recorded]) -> bool:
        done: set[str] = set()
        rule_ok = False
        for record in records:
            body = json.loads(record.body)
            payload = body.get("payload", {})
            if body.get("event_type") == "transfer-done":
                done.add(f"{payload.get('scope')}:{payload.get('name')}")
            elif body.get("event_type") == "rule_ok":
                rule_ok |= f"{payload.get('scope')}:{payload.get('name')}" == dataset
        return rule_ok and files <= done

    return over


async def _declare_stager_hermes(url: str) -> None:
    """The stager's hermes queue exists (it keeps hermes's messages while held back)."""
    settings = BusSettings.model_validate({"url": url, "retry_delays_s": RETRIES})
    async with await aio_pika.connect(url) as connection:
        await topology.declare_queue(await connection.channel(), topology.STAGER_HERMES,
                                     settings)  # fmt: skip


async def _purge_stager_hermes(url: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.STAGER_HERMES.name)
        await queue.purge()


@pytest.mark.rucio
async def test_recorded_hermes_replayed_shuffled_and_twice_tells_each_file_once(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path, fault_report: Record
) -> None:
    files = 4
    (did,) = datasets(rucio_stack, 1, files)
    (wanted,) = expected_files([did], files)
    url = broker.url()
    await _declare_stager_hermes(url)
    async with (
        telling(broker) as told,
        running_services(
            url, tmp_path, catalog(rucio_stack), mount=rse_dir(rucio_stack, NOTEBOOK),
            hold=("stager.hermes",), retry_delays=RETRIES,
            watchdog_s=600,  # only hermes may tell the stager: no re-check by timer
        ) as stack,
    ):  # fmt: skip
        async with Recorder(url) as recorder:
            staging = stage(broker, did)
            await recorder.wait(_burst_over(did, wanted), timeout=120, quiet_s=2)
        recorded = tmp_path / "hermes.jsonl"
        save(recorded, recorder.records)
        await _purge_stager_hermes(url)  # the stager sees only the replay
        sent = await replay(url, load(recorded), shuffle=True, times=2, seed=5)
        released = time.monotonic()
        await stack.release("stager.hermes")
        result = await staging
        recovery = time.monotonic() - released
        await asyncio.sleep(SETTLE_S)
    lost, duplicates = told.figures({result.request_id: wanted})
    fault_report(FaultFigure(
        f"recorded hermes burst ({len(recorder.records)} messages) replayed shuffled, twice",
        sent=len(wanted), lost=lost, duplicates=duplicates, recovery_s=recovery,
        note=f"{sent} messages replayed (seed 5); recovery: queue released to completion",
    ))  # fmt: skip
    assert sent == 2 * len(recorder.records)
    assert result.ok, result
    assert (lost, duplicates) == (0, 0)


def _hermes_body(event_type: str, name: str) -> bytes:
    payload = {"scope": "user.alice", "name": name, "rule_id": "0" * 32}
    return json.dumps({"event_type": event_type, "payload": payload,
                       "created_at": "2026-12-02 04:22:41.124165"}).encode()  # fmt: skip


async def _cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dlaas_devstack.replay", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def test_the_replay_cli_records_a_file_and_plays_it_back_shuffled_and_repeated(
    broker: Vhost, tmp_path: Path
) -> None:
    url, recorded = broker.url(), tmp_path / "hermes.jsonl"
    sent = [_hermes_body("rule_ok", f"ds-{i}") for i in range(3)]
    recorder = await _cli("--url", url, "record", "--out", str(recorded), "--count", "3")
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        async with asyncio.timeout(60):  # its queue is bound once it says so
            while (
                recorder.stdout and b"recording" not in await recorder.stdout.readline()
            ):
                pass
        hermes = await channel.get_exchange(topology.HERMES)
        for body in sent:
            await hermes.publish(
                aio_pika.Message(body, headers={"event_type": "rule_ok"}),
                routing_key="local",
            )
        assert await asyncio.wait_for(recorder.wait(), 60) == 0
        records = load(recorded)
        assert [(r.body, r.routing_key, r.headers) for r in records] == [
            (body, "local", {"event_type": "rule_ok"}) for body in sent
        ]
        listener = await channel.declare_queue(exclusive=True)
        await listener.bind(topology.HERMES, "#")
        player = await _cli("--url", url, "replay", "--in", str(recorded), "--shuffle",
                            "--times", "2", "--seed", "3")  # fmt: skip
        assert await asyncio.wait_for(player.wait(), 60) == 0
        received: list[bytes] = []
        async with asyncio.timeout(30):
            while len(received) < 2 * len(sent):
                got = await listener.get(fail=False)
                if got is None:
                    await asyncio.sleep(0.1)
                    continue
                await got.ack()
                received.append(got.body)
    assert sorted(received) == sorted(sent * 2)
    assert received == [r.body for r in arrange(records, times=2, shuffle=True, seed=3)]
