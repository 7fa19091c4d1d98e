"""Two real Rucio instances side by side, with the same DID and RSE names in both.

The session's Rucio is the default instance; a second one (``escape2``) runs hermes but no
conveyor or judge, so its rules never progress: when the default instance's hermes reports the
transfers of a DID that both instances know, only the default instance's request may be
served. The second instance is added to a running stager by writing its instances file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dlaas.client.api import astage, astatus
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, build_lake, make_dataset, rse_dir
from dlaas_devstack.rucio import RucioStack, RucioStackSettings
from dlaas_stager.adapters.rucio import RucioCatalog
from dlaas_stager.settings import RucioSettings
from tests.services import Stack, running_services

pytestmark = [pytest.mark.rucio, pytest.mark.timeout(400)]

SECOND = "escape2"


def _identity_json(stack: RucioStack) -> dict[str, str]:
    return {"host": stack.rucio_host, "username": "ddmlab", "password": "secret"}


def _identity(stack: RucioStack) -> RucioSettings:
    return RucioSettings.model_validate(_identity_json(stack))


@pytest.fixture(scope="module")
def second_rucio(
    broker: Vhost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RucioStack]:
    """A second Rucio: own database, REST port and storage; its hermes says ``escape2``."""
    settings = RucioStackSettings(
        workdir=tmp_path_factory.mktemp("rucio-escape2"),
        amqp_vhost=broker.name,
        db_name=f"dlaas_test_{uuid.uuid4().hex[:8]}",
        instance=SECOND,
        daemons=("hermes",),
        gunicorn_workers=1,
    )
    stack = RucioStack(settings)
    stack.start()
    try:
        build_lake(stack)
        yield stack
    finally:
        stack.stop()
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
             f'DROP DATABASE IF EXISTS "{settings.db_name}" WITH (FORCE)'],
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
async def services(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> AsyncIterator[tuple[Stack, Path]]:
    instances = tmp_path / "instances.json"  # none yet besides the default
    catalog = RucioCatalog(_identity(rucio_stack))
    async with running_services(
        broker.url(),
        tmp_path,
        catalog,
        mount=rse_dir(rucio_stack, NOTEBOOK),
        retry_delays=(1.0, 2.0, 4.0),
        instances_file=instances,
    ) as stack:
        yield stack, instances


def _bus(broker: Vhost) -> BusSettings:
    return BusSettings.model_validate({"url": broker.url("alice")})


async def test_events_of_one_instance_never_serve_a_request_of_another(
    broker: Vhost,
    rucio_stack: RucioStack,
    second_rucio: RucioStack,
    services: tuple[Stack, Path],
) -> None:
    _, instances_file = services
    name = f"same-{uuid.uuid4().hex[:8]}"
    did = f"user.alice:{name}"
    for stack in (rucio_stack, second_rucio):  # the same DID in both instances
        make_dataset(stack, "user.alice", name, 2)

    unknown = await astage([did], rse=NOTEBOOK, instance=SECOND, timeout=60,
                           settings=_bus(broker))  # fmt: skip
    assert unknown.reason is not None
    assert f"unknown Rucio instance '{SECOND}'" in unknown.reason

    # an operator adds the instance: no restart
    instances_file.write_text(json.dumps({SECOND: _identity_json(second_rucio)}))
    await asyncio.sleep(1.5)
    theirs = await astage([did], rse=NOTEBOOK, instance=SECOND, wait=False,
                          settings=_bus(broker))  # fmt: skip
    async with asyncio.timeout(60):
        while (await astatus(theirs.request_id, settings=_bus(broker))).files_total != 2:
            await asyncio.sleep(0.5)
    rules = second_rucio.client().list_did_rules("user.alice", name)
    assert [r["rse_expression"] for r in rules] == [NOTEBOOK]  # made in escape2

    ours = await astage([did], rse=NOTEBOOK, timeout=180, settings=_bus(broker))
    assert ours.ok, ours
    assert len(ours.ready) == 2
    for ready in ours.ready.values():  # the default instance's bytes, through its mount
        assert (
            Path(ready.path).read_bytes()
            == (
                rse_dir(rucio_stack, NOTEBOOK) / ready.pfn.split("/data/notebook/", 1)[1]
            ).read_bytes()
        )

    await asyncio.sleep(2)  # the default instance's events have all been handled
    status = await astatus(theirs.request_id, settings=_bus(broker))
    assert status.ready == {}, "escape2's request was served by the default's events"
    assert status.failed == {}
    assert not status.completed
