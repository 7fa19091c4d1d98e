"""Isolation enforced by RabbitMQ: two real users, alice and bob, with end-user rights only."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from dlaas.bus import batch, topology
from dlaas.client.api import astage
from dlaas.contracts import FileVisible, Notification, RuleRequested
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_notifier.permissions import ManagementApi, user_grant
from tests.broker import open_broker
from tests.fakes.catalog import FakeCatalog
from tests.services import running_services

pytestmark = [pytest.mark.security, pytest.mark.broker]


@pytest.fixture
async def vhost() -> AsyncIterator[Vhost]:
    """A vhost of its own where alice and bob have end-user rights only."""
    opened = open_broker()
    admin = opened.admin
    api = ManagementApi(admin.api, admin.user, admin.password)
    try:
        async with await aio_pika.connect(opened.url()) as connection:
            channel = await connection.channel()
            await topology.declare_exchanges(channel)
            for user in ("alice", "bob"):
                await topology.declare_inbox(channel, user, BusSettings())
                await api.apply(opened.name, user_grant(user))
        yield opened
    finally:
        opened.delete()


@asynccontextmanager
async def as_user(vhost: Vhost, user: str) -> AsyncIterator[AbstractChannel]:
    """A plain (not robust) channel of ``user``: the broker closes it on a refusal."""
    async with await aio_pika.connect(vhost.url(user)) as connection:
        yield await connection.channel()


async def refused(
    vhost: Vhost, user: str, act: Callable[[AbstractChannel], Awaitable[object]]
) -> str:
    """The broker's reason for refusing ``act`` to ``user`` (it closes the channel), or ""."""
    async with as_user(vhost, user) as channel:
        try:
            await act(channel)
        except (ChannelAccessRefused, ChannelPreconditionFailed) as exc:
            return str(exc)
    return ""


async def _bind(channel: AbstractChannel, routing_key: str) -> None:
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.NOTIFY, routing_key)


async def test_bob_cannot_bind_to_alices_notifications(vhost: Vhost) -> None:
    for key in ("user.alice.#", "user.alice.*", "user.*.*", "#", "user.#"):
        reason = await refused(vhost, "bob", functools.partial(_bind, routing_key=key))
        assert f"access to topic '{key}' in exchange 'dlaas.notify'" in reason
    assert not await refused(vhost, "bob", lambda ch: _bind(ch, "user.bob.#"))
    assert not await refused(vhost, "alice", lambda ch: _bind(ch, "user.alice.#"))


async def _consume(channel: AbstractChannel, queue_name: str) -> None:
    queue = await channel.get_queue(queue_name)  # passive: exists, no rights needed
    await queue.consume(_ignore)


async def _ignore(_message: AbstractIncomingMessage) -> None:
    return None


async def test_bob_cannot_consume_or_touch_alices_inbox(vhost: Vhost) -> None:
    inbox = topology.inbox("alice").name

    async def take(channel: AbstractChannel) -> None:
        await (await channel.get_queue(inbox)).get(fail=False)

    async def delete(channel: AbstractChannel) -> None:
        await channel.queue_delete(inbox)

    async def purge(channel: AbstractChannel) -> None:
        await (await channel.get_queue(inbox)).purge()

    for act in (lambda ch: _consume(ch, inbox), take, delete, purge):
        assert f"access to queue '{inbox}'" in await refused(vhost, "bob", act)
    assert not await refused(vhost, "alice", lambda ch: _consume(ch, inbox))
    assert not await refused(vhost, "bob", lambda ch: _consume(ch, "dlaas.inbox.bob"))


def _message(event: RuleRequested | FileVisible, user_id: str | None) -> aio_pika.Message:
    return aio_pika.Message(
        event.model_dump_json().encode(), type=event.event_type, user_id=user_id
    )


async def _publish(
    channel: AbstractChannel, exchange: str, key: str, message: aio_pika.Message
) -> None:
    target = (
        channel.default_exchange if not exchange else await channel.get_exchange(exchange)
    )
    await target.publish(message, routing_key=key)


async def test_bob_cannot_speak_for_alice_or_for_a_service(vhost: Vhost) -> None:
    request = RuleRequested(request_id=uuid4(), user="alice", dids=["s:d"], rse="NB")
    as_alice = _message(request, "alice")
    key = RuleRequested.routing_key()
    fake = FileVisible(
        request_id=request.request_id, user="alice", did="s:f", rse="NB", pfn="p",
        bytes=1, cache_url="c", path="/etc/passwd", mount_path="/m",
    )  # fmt: skip
    forgeries = [
        (topology.EVENTS, key, as_alice, "user_id property set to 'alice'"),
        (topology.EVENTS, FileVisible.routing_key(), _message(fake, None), "topic"),
        (
            topology.NOTIFY,
            "user.alice.x",
            _message(fake, None),
            "exchange 'dlaas.notify'",
        ),
        ("", topology.inbox("alice").name, _message(fake, None), "'amq.default'"),
    ]
    for exchange, routing_key, message, why in forgeries:

        async def act(
            ch: AbstractChannel,
            e: str = exchange,
            k: str = routing_key,
            m: aio_pika.Message = message,
        ) -> None:
            await _publish(ch, e, k, m)

        assert why in await refused(vhost, "bob", act)
    assert not await refused(
        vhost, "alice", lambda ch: _publish(ch, topology.EVENTS, key, as_alice)
    )


async def test_the_client_works_under_end_user_rights(
    vhost: Vhost, tmp_path: Path
) -> None:
    settings = BusSettings.model_validate({"url": vhost.url("alice")})
    async with running_services(vhost.url(), tmp_path, FakeCatalog()):
        result = await astage(
            ["user.alice:nope"], rse="NB", timeout=20, settings=settings
        )
    assert result.completed
    assert result.reason is not None
    assert "DataIdentifierNotFound" in result.reason
    # offline or not, the inbox kept it: what `dlaas inbox` reads, with alice's rights
    async with as_user(vhost, "alice") as channel:
        inbox = await channel.get_queue(topology.inbox("alice").name)
        message = await inbox.get(fail=False, no_ack=True)
    assert message is not None
    notes = [Notification.model_validate_json(b) for _, b in batch.unbatch(message)]
    assert notes[0].kind == "failed"


async def test_without_configure_on_exchanges_a_user_cannot_delete_them(
    vhost: Vhost,
) -> None:
    admin = vhost.admin
    api = ManagementApi(admin.api, admin.user, admin.password)
    await api.apply(vhost.name, user_grant("bob", declares_exchanges=False))

    async def delete(channel: AbstractChannel) -> None:
        await channel.exchange_delete(topology.NOTIFY)

    async def passive_then_bind(channel: AbstractChannel) -> None:
        await channel.get_exchange(topology.NOTIFY)  # what a client would do instead
        await _bind(channel, "user.bob.#")

    assert "access to exchange 'dlaas.notify'" in await refused(vhost, "bob", delete)
    assert not await refused(vhost, "bob", passive_then_bind)
