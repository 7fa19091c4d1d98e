"""Events published together share one message; each is still handled and settled alone."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from dlaas.bus import batch, decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import ATTEMPT_HEADER, REASON_HEADER, Consumer, Delivery
from dlaas.contracts import FileVisible
from dlaas.errors import TransientError
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost

pytestmark = pytest.mark.broker


def _visible(n: int) -> FileVisible:
    return FileVisible(
        request_id=uuid.uuid4(),
        user="alice",
        did=f"user.alice:f{n}",
        rse="NOTEBOOK",
        pfn=f"root://origin//data/f{n}",
        bytes=n,
        cache_url=f"root://cache//root://origin//data/f{n}",
        path=f"/views/alice/user.alice/f{n}",
        mount_path=f"/mnt/nb/data/f{n}",
    )


def _settings(broker: Vhost, **extra: object) -> BusSettings:
    return BusSettings.model_validate(
        {"url": broker.url(), "retry_delays_s": (0.2,), "parked_ttl_s": 0} | extra
    )


@asynccontextmanager
async def _spy(
    url: str, key: str
) -> AsyncIterator[asyncio.Queue[AbstractIncomingMessage]]:
    """Every message published under ``key`` while inside, as it came."""
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topology.EVENTS, key)

        async def keep(message: AbstractIncomingMessage) -> None:
            await got.put(message)
            await message.ack()

        await queue.consume(keep)
        yield got


async def _events(
    got: asyncio.Queue[AbstractIncomingMessage], n: int
) -> tuple[list[str | None], list[FileVisible]]:
    """AMQP types of the messages that carried the next ``n`` events, and the events."""
    types: list[str | None] = []
    events: list[FileVisible] = []
    async with asyncio.timeout(10):
        while len(events) < n:
            message = await got.get()
            types.append(message.type)
            events += [
                FileVisible.model_validate_json(b) for _, b in batch.unbatch(message)
            ]
    return types, events


async def test_events_published_together_share_a_message_and_an_event_alone_does_not(
    broker: Vhost,
) -> None:
    bus = await Bus(_settings(broker), name="test").connect()
    try:
        async with _spy(broker.url(), FileVisible.routing_key()) as got:
            burst = [_visible(n) for n in range(250)]
            await asyncio.gather(
                *(bus.publish(e, correlation_id=f"c{e.bytes}") for e in burst)
            )
            types, events = await _events(got, len(burst))
            # one message per 100 (DLAAS_BUS__BATCH_MAX_EVENTS), every event once, in order
            assert types == [batch.BATCH_TYPE] * 3
            assert [e.event_id for e in events] == [e.event_id for e in burst]

            alone = _visible(1000)
            await bus.publish(alone)
            types, events = await _events(got, 1)
            assert types == [FileVisible.event_type]  # the plain message, as always
            assert events == [alone]
    finally:
        await bus.close()


async def test_batching_off_publishes_one_message_per_event(broker: Vhost) -> None:
    bus = await Bus(_settings(broker, batch_max_events=1), name="test").connect()
    try:
        async with _spy(broker.url(), FileVisible.routing_key()) as got:
            await asyncio.gather(*(bus.publish(_visible(n)) for n in range(20)))
            types, _ = await _events(got, 20)
            assert types == [FileVisible.event_type] * 20
    finally:
        await bus.close()


def _own_queue() -> topology.QueueSpec:
    """A work queue of this test's alone, bound to a routing key nobody else uses."""
    tag = uuid.uuid4().hex[:8]
    return topology.QueueSpec(f"test.batching.{tag}", ((topology.EVENTS, f"test.{tag}"),))


async def _first(
    channel: aio_pika.abc.AbstractChannel, name: str
) -> AbstractIncomingMessage:
    """The first message to arrive in queue ``name`` (taken and acked)."""
    queue = await channel.get_queue(name)
    async with asyncio.timeout(15):
        while (message := await queue.get(fail=False)) is None:
            await asyncio.sleep(0.05)
    await message.ack()
    return message


async def _until_empty(channel: aio_pika.abc.AbstractChannel, *names: str) -> None:
    async with asyncio.timeout(15):
        while True:
            counts = []
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                counts.append(queue.declaration_result.message_count)
            if not any(counts):
                return
            await asyncio.sleep(0.1)


async def test_in_a_batch_a_failing_event_is_retried_alone_and_a_bad_one_dead_lettered(
    broker: Vhost,
) -> None:
    settings = _settings(broker)
    spec = _own_queue()
    good = [_visible(n) for n in range(4)]
    flaky = good[1]
    calls: Counter[uuid.UUID] = Counter()
    attempts: dict[uuid.UUID, list[int]] = {}
    correlations: dict[uuid.UUID, str | None] = {}
    done = asyncio.Event()

    async def handle(event: FileVisible, delivery: Delivery) -> None:
        calls[event.event_id] += 1
        attempts.setdefault(event.event_id, []).append(delivery.attempt)
        correlations[event.event_id] = delivery.correlation_id
        if event.event_id == flaky.event_id and calls[event.event_id] == 1:
            raise TransientError("not yet")
        if set(calls) == {e.event_id for e in good} and calls[flaky.event_id] == 2:
            done.set()

    bus = await Bus(settings, name="test").connect()
    consumer = Consumer(
        bus, spec, decoders.events(FileVisible), {FileVisible.event_type: handle}
    )
    await consumer.start()
    try:
        items = [
            batch.item_json(
                FileVisible.event_type,
                e.model_dump_json().encode(),
                str(e.event_id),
                f"corr-{n}",
            )
            for n, e in enumerate(good)
        ]
        bad = batch.item_json(FileVisible.event_type, b'{"did": "x"}', "bad-1", None)
        message = aio_pika.Message(
            batch.pack([*items[:2], bad, *items[2:]]),
            type=batch.BATCH_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={batch.BATCH_HEADER: 5},
        )
        exchange = await bus.channel.get_exchange(topology.EVENTS)
        await exchange.publish(message, routing_key=spec.bindings[0][1])
        async with asyncio.timeout(15):
            await done.wait()
        assert all(calls[e.event_id] == 1 for e in good if e is not flaky)
        assert attempts[flaky.event_id] == [1, 2]  # alone, from the retry queue
        assert correlations == {e.event_id: f"corr-{n}" for n, e in enumerate(good)}
        dead = await _first(bus.channel, spec.dlq)
        assert dead.type == FileVisible.event_type
        assert dead.message_id == "bad-1"
        assert dead.body == b'{"did":"x"}'
        assert "malformed FileVisible" in str((dead.headers or {})[REASON_HEADER])
        await _until_empty(bus.channel, spec.name, spec.dlq, spec.retry(0.2))
    finally:
        await consumer.stop()
        await bus.close()


async def test_a_batch_on_a_queue_that_takes_none_is_dead_lettered_whole(
    broker: Vhost,
) -> None:
    settings = _settings(broker)
    spec = _own_queue()
    bus = await Bus(settings, name="test").connect()
    consumer = Consumer(bus, spec, decoders.hermes(()), {})
    await consumer.start()
    try:
        body = batch.pack([batch.item_json("transfer-done", b"{}", None, None)])
        exchange = await bus.channel.get_exchange(topology.EVENTS)
        await exchange.publish(
            aio_pika.Message(body, type=batch.BATCH_TYPE), routing_key=spec.bindings[0][1]
        )
        dead = await _first(bus.channel, spec.dlq)
        assert dead.body == body
        assert dead.type == batch.BATCH_TYPE
        assert "takes no batches" in str((dead.headers or {})[REASON_HEADER])
        assert ATTEMPT_HEADER not in (dead.headers or {})
    finally:
        await consumer.stop()
        await bus.close()
