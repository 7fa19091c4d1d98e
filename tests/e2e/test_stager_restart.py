"""A stager killed (SIGKILL) in the middle of a request, its state in PostgreSQL, restarted:
the request completes, nothing lost, nothing told twice."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlaas.client.api import StageResult, astage
from dlaas.contracts import Notification
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, make_dataset, rse_dir
from dlaas_devstack.rucio import RucioStack
from dlaas_devstack.services import DlaasConfig, DlaasServices

pytestmark = [pytest.mark.e2e, pytest.mark.rucio, pytest.mark.faults]


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql],
                   check=True, capture_output=True, timeout=60)  # fmt: skip


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL, for the stager's state."""
    name = f"dlaas_stager_{uuid.uuid4().hex[:8]}"
    _psql(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_stager_killed_mid_request_loses_nothing(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path, postgres_db: str
) -> None:
    name = f"ds-{uuid.uuid4().hex[:6]}"
    make_dataset(rucio_stack, "user.alice", name, 5, at_destination=True)
    config = DlaasConfig(
        workdir=tmp_path, amqp_url=broker.url(), rucio_host=rucio_stack.rucio_host,
        mount_path=rse_dir(rucio_stack, NOTEBOOK), path_begins_at=2, db_url=postgres_db,
    )  # fmt: skip
    seen: list[Notification] = []
    accepted = asyncio.Event()

    def on_update(note: Notification, _: StageResult) -> None:
        seen.append(note)
        if note.kind == "accepted":
            accepted.set()

    with DlaasServices(config) as services:
        staging = asyncio.create_task(astage(
            [f"user.alice:{name}"], rse=NOTEBOOK, timeout=180, on_update=on_update,
            settings=BusSettings.model_validate({"url": broker.url("alice")}),
        ))  # fmt: skip
        await asyncio.wait_for(accepted.wait(), 60)
        services.kill(
            "stager"
        )  # Rucio goes on transferring; hermes messages wait in queue
        await asyncio.sleep(8)
        services.restart("stager")
        result = await staging
    assert result.ok, result
    assert len(result.ready) == 5
    per_file = [n.did for n in seen if n.kind == "file-ready"]
    assert len(per_file) == len(set(per_file)) == 5
