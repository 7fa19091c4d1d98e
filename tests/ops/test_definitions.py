"""deploy/rabbitmq/definitions.json: generated from the topology; least privilege on a real broker."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import ChannelClosed
from pydantic import SecretStr

from dlaas import asyncapi
from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.settings import BusSettings
from tests.broker import reachable
from tests.ops.conftest import DEFINITIONS, Imported
from tests.ops.tools import need

STOMP_PORT = 61613


def _generator() -> ModuleType:
    path = DEFINITIONS.with_name("generate.py")
    spec = importlib.util.spec_from_file_location("dlaas_definitions_generator", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_committed_definitions_are_up_to_date() -> None:
    assert DEFINITIONS.read_text(encoding="utf-8") == _generator().render(), (
        "definitions.json is stale: run .venv/bin/python deploy/rabbitmq/generate.py"
    )


def test_every_work_queue_has_its_dead_letter_and_retry_queues() -> None:
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    queues = {q["name"]: q for q in definitions["queues"]}
    delays = BusSettings().retry_delays_s
    for spec in topology.WORK_QUEUES:
        assert queues[spec.name]["arguments"]["x-dead-letter-routing-key"] == spec.dlq
        assert spec.dlq in queues
        for delay in delays:
            retry = queues[spec.retry(delay)]["arguments"]
            assert retry["x-message-ttl"] == int(delay * 1000)
            assert retry["x-dead-letter-routing-key"] == spec.name
    assert all(q["arguments"]["x-queue-type"] == "quorum" for q in queues.values())
    assert {e["name"] for e in definitions["exchanges"]} == set(topology.EXCHANGES)
    assert all(e["type"] == "topic" and e["durable"] for e in definitions["exchanges"])
    services = {u["name"]: u["tags"] for u in definitions["users"]}
    assert all(
        services[f"dlaas-{s.replace('_', '-')}"] == ["impersonator"]
        for s in asyncapi.SERVICES
    )
    assert all(u["password"].startswith("CHANGE-ME-") for u in definitions["users"])


async def _ignore(_: object) -> None:
    """A consumer callback for consumes that must be refused before any delivery."""


def _specs(service: str) -> list[topology.QueueSpec]:
    return [s for s in topology.WORK_QUEUES if s.name.split(".")[0] == service]


async def _refused(
    url: str, action: Callable[[AbstractChannel], Awaitable[object]]
) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        with pytest.raises(ChannelClosed, match="ACCESS_REFUSED"):
            await action(channel)
    finally:
        await connection.close()


@pytest.mark.broker
@pytest.mark.parametrize("service", asyncapi.SERVICES)
async def test_a_service_runs_with_its_own_rights(
    imported: Imported, service: str
) -> None:
    user = f"dlaas-{service.replace('_', '-')}"
    settings = BusSettings(url=SecretStr(imported.url(user)))
    bus = await Bus(settings, name=service).connect()  # declares every exchange
    try:
        consumers = [
            Consumer(bus, spec, decoders.events(), {}) for spec in _specs(service)
        ]
        for consumer in consumers:
            await (
                consumer.start()
            )  # declares its queue, dead-letter and retry queues, binds
        for consumer in consumers:
            await consumer.stop(grace_s=1)
        spec = _specs(service)[0]
        # retries and dead letters keep the user's validated id: needs the impersonator tag
        copy = aio_pika.Message(b"{}", user_id="alice")
        await bus.send_to_queue(spec.retry(settings.retry_delays_s[0]), copy)
        await bus.send_to_queue(spec.dlq, copy)
        for channel in asyncapi.channels():
            if service in channel.senders and channel.exchange == topology.EVENTS:
                exchange = await bus.channel.get_exchange(channel.exchange)
                await exchange.publish(
                    aio_pika.Message(b"{}"), routing_key=channel.address
                )
        if service == "notifier":
            await topology.declare_inbox(bus.channel, "alice", settings)
            notify = await bus.channel.get_exchange(topology.NOTIFY)
            await notify.publish(
                aio_pika.Message(b"{}"), topology.notify_routing_key("alice", "r1")
            )
    finally:
        await bus.close()


@pytest.mark.broker
async def test_a_service_cannot_touch_another_services_queues(imported: Imported) -> None:
    stager = imported.url("dlaas-stager")
    other = topology.NOTIFIER_EVENTS

    async def consume(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(other.name, ensure=False)
        await queue.consume(_ignore)

    async def declare(channel: AbstractChannel) -> None:
        await channel.declare_queue(
            other.dlq, durable=True, arguments={"x-queue-type": "quorum"}
        )

    async def snoop(channel: AbstractChannel) -> None:  # bind its own queue to everything
        queue = await channel.get_queue(topology.STAGER_PROGRESS.name, ensure=False)
        await queue.bind(topology.EVENTS, "#")

    async def impersonate(channel: AbstractChannel) -> None:  # as another producer
        exchange = await channel.get_exchange(topology.EVENTS)
        await exchange.publish(
            aio_pika.Message(b"{}"), routing_key="fuse_agent.file-visible.v1"
        )

    async def notify(channel: AbstractChannel) -> None:  # only the notifier tells users
        exchange = await channel.get_exchange(topology.NOTIFY)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="user.alice.r1")

    for action in (consume, declare, snoop, impersonate, notify):
        await _refused(stager, action)


@pytest.mark.broker
async def test_hermes_can_only_publish_to_its_exchange(imported: Imported) -> None:
    hermes = imported.url("rucio-hermes")

    async def consume(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(topology.STAGER_HERMES.name, ensure=False)
        await queue.consume(_ignore)

    async def events(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange(topology.EVENTS, ensure=False)
        await exchange.publish(
            aio_pika.Message(b"{}"), routing_key="stager.file-staged.v1"
        )

    await _refused(hermes, consume)
    await _refused(hermes, events)
    connection = await aio_pika.connect(hermes)
    try:  # what it is for: publishing to rucio.hermes, confirmed
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.HERMES, ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="rucio-main")
    finally:
        await connection.close()


async def _stomp(imported: Imported, destination: str, body: bytes) -> bytes:
    """One SEND over STOMP as hermes does; the broker's answer frame (RECEIPT or ERROR)."""
    login, passcode = imported.users["rucio-hermes"], imported.passwords["rucio-hermes"]
    reader, writer = await asyncio.open_connection(imported.host, STOMP_PORT)
    try:
        connect = f"CONNECT\naccept-version:1.2\nhost:{imported.vhost}\nlogin:{login}\npasscode:{passcode}\n\n"
        writer.write(connect.encode() + b"\x00")
        answer = (await reader.readuntil(b"\x00")).lstrip(b"\r\n")
        assert answer.startswith(b"CONNECTED"), answer
        head = (
            f"SEND\ndestination:{destination}\npersistent:true\nevent_type:transfer-done\n"
            f"receipt:sent\ncontent-length:{len(body)}\n\n"
        )
        writer.write(head.encode() + body + b"\x00")
        return (await asyncio.wait_for(reader.readuntil(b"\x00"), 10)).lstrip(b"\r\n")
    finally:
        writer.close()


@pytest.mark.broker
async def test_hermes_over_stomp_reaches_the_stager(imported: Imported) -> None:
    if not reachable(imported.host, STOMP_PORT):
        need("RabbitMQ's STOMP plugin is not listening on 61613 (setup.sh enables it)")
    body = json.dumps(
        {"event_type": "rule_ok", "payload": {}, "created_at": "now"}
    ).encode()
    answer = await _stomp(imported, f"/exchange/{topology.HERMES}/rucio-main", body)
    assert answer.startswith(b"RECEIPT"), answer
    path = f"/queues/{quote(imported.vhost, safe='')}/{topology.STAGER_HERMES.name}/get"
    got = imported.admin.call(
        "POST", path, {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}
    )
    assert isinstance(got, list)
    assert got
    assert got[0]["payload"] == body.decode()
    assert got[0]["routing_key"] == "rucio-main"
    refused = await _stomp(
        imported, f"/exchange/{topology.EVENTS}/stager.file-staged.v1", body
    )
    assert refused.startswith(b"ERROR"), refused


@pytest.mark.broker
async def test_the_keda_user_reads_queue_lengths_and_nothing_else(
    imported: Imported,
) -> None:
    from dlaas_devstack.broker import Admin  # noqa: PLC0415

    keda = Admin(
        imported.admin.api, imported.users["dlaas-keda"], imported.passwords["dlaas-keda"]
    )
    for spec in topology.WORK_QUEUES:
        queue = keda.call("GET", f"/queues/{quote(imported.vhost, safe='')}/{spec.name}")
        assert isinstance(queue, dict)
        assert queue["name"] == spec.name
    path = f"/queues/{quote(imported.vhost, safe='')}/{topology.STAGER_REQUESTS.name}"
    for _ in range(40):  # a new queue's counts appear with the next stats emission (5 s)
        queue = keda.call("GET", path)
        if isinstance(queue, dict) and "messages" in queue:
            break
        await asyncio.sleep(0.5)
    assert isinstance(queue, dict)
    assert queue["messages"] == 0

    async def consume(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(topology.STAGER_REQUESTS.name, ensure=False)
        await queue.consume(_ignore)

    await _refused(imported.url("dlaas-keda"), consume)


def _documented_replay() -> Callable[[str, str], Awaitable[int]]:
    """The replay script of docs/operations.md, as an operator would copy it."""
    text = (DEFINITIONS.parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "replay"}
    exec(compile(code, "operations.md", "exec"), namespace)  # noqa: S102  (our own docs)
    return namespace["replay"]  # type: ignore[return-value]


@pytest.mark.broker
async def test_the_documented_replay_moves_dead_letters_back(imported: Imported) -> None:
    url = imported.url("dlaas-stager")
    settings = BusSettings(url=SecretStr(url))
    bus = await Bus(settings, name="stager").connect()
    try:
        spec = topology.STAGER_REQUESTS
        await topology.declare_queue(bus.channel, spec, settings)
        dead = aio_pika.Message(
            b'{"x": 1}',
            type="rule-requested.v1",
            user_id="alice",
            headers={"x-dlaas-reason": "RucioDown", "x-dlaas-attempt": 5, "keep": "me"},
        )
        await bus.send_to_queue(spec.dlq, dead)
        assert await _documented_replay()(url, spec.name) == 1
        queue = await bus.channel.get_queue(spec.name, ensure=False)
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        assert (message.body, message.user_id, message.type) == (
            b'{"x": 1}',
            "alice",
            "rule-requested.v1",
        )
        headers = dict(message.headers or {})
        headers.pop("x-delivery-count", None)  # the quorum queue's own count
        assert headers == {"keep": "me"}
        dlq = await bus.channel.get_queue(spec.dlq, ensure=False)
        assert await dlq.get(fail=False) is None
    finally:
        await bus.close()
