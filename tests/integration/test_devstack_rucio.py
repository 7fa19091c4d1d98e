"""A real Rucio from dlaas_devstack.rucio moves a dataset and hermes reports it on RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from dlaas_devstack.lake import NOTEBOOK, build_lake, hash_path, make_dataset
from dlaas_devstack.rucio import RucioStack, amqp_url_for_vhost

pytestmark = [pytest.mark.rucio, pytest.mark.timeout(600)]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
QUEUE = "devstack-test.hermes"
CYCLE_TIMEOUT = 120.0


def _report(text: str) -> None:
    """Timings and sample messages go to the terminal (run with -s to see them)."""
    print(text)


@pytest.fixture(scope="module")
def stack(rucio_stack: RucioStack) -> RucioStack:
    """The session's Rucio (tests/conftest.py): one stack for every Rucio test, on 2 cores."""
    return rucio_stack


async def _declare_queue(url: str, exchange: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, durable=True)
        await queue.bind(exchange, routing_key="#")


@pytest.fixture(scope="module")
def hermes_url(stack: RucioStack) -> str:
    """AMQP URL of the stack's vhost, with QUEUE bound to everything hermes sends."""
    url = amqp_url_for_vhost(AMQP_URL, stack.settings.amqp_vhost)
    asyncio.run(_declare_queue(url, stack.settings.hermes_exchange))
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
        rule_ok = any(
            b["payload"]["rule_id"] == self.rule_id for b in self.of_type("rule_ok")
        )
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
    stack: RucioStack, hermes_url: str
) -> None:
    build_lake(stack)
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    files = make_dataset(stack, "user.alice", dataset, 3)
    client = stack.client()

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
    try:
        asyncio.run(_collect(hermes_url, seen, CYCLE_TIMEOUT))
    except TimeoutError:
        stack.raise_if_exited()
        kinds = Counter(b["event_type"] for b in seen.bodies)
        state = client.get_replication_rule(rule_id)["state"]
        pytest.fail(
            f"no transfer-done x3 + rule_ok in {CYCLE_TIMEOUT:.0f} s: saw {kinds}, rule {state}"
        )
    _report(
        f"\n[timing] 3-file rule until rule_ok on AMQP: {time.monotonic() - started:.1f} s"
    )
    _report(f"[hermes] transfer-done: {json.dumps(seen.of_type('transfer-done')[0])}")
    _report(f"[hermes] rule_ok: {json.dumps(seen.of_type('rule_ok')[0])}")

    assert seen.routing_keys == {stack.settings.instance}
    assert client.get_replication_rule(rule_id)["state"] == "OK"
    for lake_file in files:
        pfn = _pfn_at(client, lake_file.scope, lake_file.name, NOTEBOOK)
        url = urlsplit(pfn)
        assert (url.scheme, url.hostname, url.port) == (
            "root",
            "127.0.0.1",
            stack.rse_port,
        )
        # root://host:port//abs/path: the RSE prefix starts with "//" as XRootD expects
        assert url.path == f"//data/notebook/{hash_path(lake_file.scope, lake_file.name)}"
        assert url.path == "/" + lake_file.pfn_path_at(NOTEBOOK)
        local = stack.storage_root / url.path.lstrip("/")
        assert local.stat().st_size == lake_file.bytes


def test_build_lake_is_idempotent_and_users_can_log_in(stack: RucioStack) -> None:
    build_lake(stack)
    build_lake(stack)
    assert stack.client("bob").whoami()["account"] == "bob"
    rses = {rse["rse"] for rse in stack.client().list_rses()}
    assert {"ORIGIN", NOTEBOOK} <= rses
    assert Path(stack.client_config).is_file()
