"""A real Rucio from dlaas_devstack.rucio moves a dataset and hermes reports it on RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from dlaas_devstack import _proc
from dlaas_devstack.lake import NOTEBOOK, build_lake, hash_path, make_dataset
from dlaas_devstack.rucio import RucioStack, RucioStackSettings, amqp_url_for_vhost

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.rucio, pytest.mark.timeout(600)]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
QUEUE = "devstack-test.hermes"
CYCLE_TIMEOUT = 120.0


def _require(available: bool, reason: str) -> None:
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _ensure_stomp() -> None:
    if _proc.port_open("127.0.0.1", 61613):
        return
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_stomp"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    _proc.wait_until(lambda: _proc.port_open("127.0.0.1", 61613), timeout=30, what="STOMP")


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    _require(_proc.port_open("127.0.0.1", 5672), "RabbitMQ is not reachable on 127.0.0.1:5672")
    _require(_proc.port_open("127.0.0.1", 5432), "PostgreSQL is not reachable on 127.0.0.1:5432")
    _ensure_stomp()
    vhost = f"dlaas-devstack-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rucio_stack(tmp_path_factory: pytest.TempPathFactory, amqp_vhost: str) -> Iterator[RucioStack]:
    settings = RucioStackSettings(
        workdir=tmp_path_factory.mktemp("rucio"),
        amqp_vhost=amqp_vhost,
        amqp_url=AMQP_URL,
        db_name="dlaas_rucio_devstack_test",
    )
    stack = RucioStack(settings)
    started = time.monotonic()
    stack.start()
    print(f"\n[timing] rucio stack start-up: {time.monotonic() - started:.1f} s")
    pids = stack.pids()
    try:
        yield stack
    finally:
        stopping = time.monotonic()
        stack.stop()
        print(f"\n[timing] rucio stack stop: {time.monotonic() - stopping:.1f} s")
        assert not [name for name, pid in pids.items() if _group_alive(pid)]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _declare_queue(url: str, exchange: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, durable=True)
        await queue.bind(exchange, routing_key="#")


@pytest.fixture(scope="session")
def hermes_url(rucio_stack: RucioStack) -> str:
    """AMQP URL of the stack's vhost, with QUEUE bound to everything hermes sends."""
    url = amqp_url_for_vhost(AMQP_URL, rucio_stack.settings.amqp_vhost)
    asyncio.run(_declare_queue(url, rucio_stack.settings.hermes_exchange))
    return url


class Seen:
    """Hermes messages received so far, and whether the expected ones are among them."""

    def __init__(self, names: set[str], rule_id: str) -> None:
        self.names, self.rule_id = names, rule_id
        self.bodies: list[dict[str, Any]] = []
        self.routing_keys: set[str] = set()

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["event_type"] == event_type]

    def complete(self) -> bool:
        done = {
            b["payload"]["name"]
            for b in self.of_type("transfer-done")
            if b["payload"]["dst-rse"] == NOTEBOOK
        }
        rule_ok = any(b["payload"]["rule_id"] == self.rule_id for b in self.of_type("rule_ok"))
        return self.names <= done and rule_ok


async def _collect(url: str, seen: Seen, timeout: float) -> None:
    async with await aio_pika.connect(url) as connection, asyncio.timeout(timeout):
        channel = await connection.channel()
        queue = await channel.get_queue(QUEUE)
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    seen.bodies.append(json.loads(message.body))
                    seen.routing_keys.add(message.routing_key or "")
                if seen.complete():
                    return


def _pfn_at(client: Any, scope: str, name: str, rse: str) -> str:
    did = {"scope": scope, "name": name}
    (replica,) = client.list_replicas(
        [did], schemes=["root"], rse_expression=rse, sort="random"
    )
    assert replica["states"] == {rse: "AVAILABLE"}
    (pfn,) = replica["pfns"]
    return str(pfn)


def test_dataset_rule_transfers_and_hermes_reports_it(
    rucio_stack: RucioStack, hermes_url: str
) -> None:
    build_lake(rucio_stack)
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    files = make_dataset(rucio_stack, "user.alice", dataset, 3)
    client = rucio_stack.client()

    started = time.monotonic()
    (rule_id,) = client.add_replication_rule(
        dids=[{"scope": "user.alice", "name": dataset}],
        copies=1,
        rse_expression=NOTEBOOK,
        notify="Y",
        grouping="DATASET",
        account="alice",
    )
    seen = Seen({f.name for f in files}, rule_id)
    asyncio.run(_collect(hermes_url, seen, CYCLE_TIMEOUT))
    print(f"\n[timing] 3-file rule until rule_ok on AMQP: {time.monotonic() - started:.1f} s")
    print("[hermes] transfer-done:", json.dumps(seen.of_type("transfer-done")[0]))
    print("[hermes] rule_ok:", json.dumps(seen.of_type("rule_ok")[0]))

    assert seen.routing_keys == {rucio_stack.settings.instance}
    assert client.get_replication_rule(rule_id)["state"] == "OK"
    for lake_file in files:
        pfn = _pfn_at(client, lake_file.scope, lake_file.name, NOTEBOOK)
        url = urlsplit(pfn)
        assert (url.scheme, url.hostname, url.port) == ("root", "127.0.0.1", rucio_stack.rse_port)
        assert url.path == f"/data/notebook/{hash_path(lake_file.scope, lake_file.name)}"
        assert url.path == lake_file.pfn_path_at(NOTEBOOK)
        local = rucio_stack.storage_root / url.path.lstrip("/")
        assert local.stat().st_size == lake_file.bytes


def test_build_lake_is_idempotent_and_users_can_log_in(rucio_stack: RucioStack) -> None:
    build_lake(rucio_stack)
    build_lake(rucio_stack)
    assert rucio_stack.client("bob").whoami()["account"] == "bob"
    rses = {rse["rse"] for rse in rucio_stack.client().list_rses()}
    assert {"ORIGIN", NOTEBOOK} <= rses
    assert Path(rucio_stack.client_config).is_file()
