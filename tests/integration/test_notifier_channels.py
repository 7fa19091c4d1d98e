"""The notifier's channels against real servers: RabbitMQ, an SMTP server, an HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from urllib.parse import quote

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from dlaas.bus.connection import Bus
from dlaas.contracts import (
    FileVisible,
    Notification,
    RequestAccepted,
    RequestCompleted,
)
from dlaas.contracts.base import Event
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_notifier.app import build
from dlaas_notifier.settings import NotifierOptions, NotifierSettings

pytestmark = [pytest.mark.notifier, pytest.mark.broker]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping what it receives."""

    mails: list[Message] = field(default_factory=list)

    async def handle_DATA(  # noqa: N802  (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.mails.append(message_from_bytes(envelope.content or b""))  # type: ignore[arg-type]
        return "250 OK"


@asynccontextmanager
async def smtp_server(port: int) -> AsyncIterator[Mailbox]:
    mailbox, loop = Mailbox(), asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(mailbox, loop=loop), "127.0.0.1", port)
    try:
        yield mailbox
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Hook:
    """A tiny HTTP server taking incoming-webhook posts; answers from ``statuses`` first."""

    statuses: list[int] = field(default_factory=list)
    posts: list[dict[str, str]] = field(default_factory=list)
    calls: int = 0

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.posts.append(json.loads(body))
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()


@asynccontextmanager
async def hook_server(hook: Hook) -> AsyncIterator[str]:
    server = await asyncio.start_server(hook.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hooks/secret"
    finally:
        server.close()
        await server.wait_closed()


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def notifier(
    broker: Vhost,
    user: str,
    smtp_port: int,
    hook_url: str,
    bus: dict[str, object] | None = None,
    **options: object,
) -> AsyncIterator[Bus]:
    """The notifier consuming on the real broker; yields a bus to publish events with."""
    bus_settings = BusSettings.model_validate(
        {"url": broker.url(), "retry_delays_s": (0.2, 0.5)} | (bus or {})
    )
    settings = NotifierSettings(
        bus=bus_settings,
        notifier=NotifierOptions.model_validate(
            {
                "db_url": f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/notifier.db",
                "users": {user: {"email": f"{user}@example.org", "webhook": hook_url}},
                "smtp": {"port": smtp_port, "timeout_s": 2},
                "progress_min_files": 4,
                "progress_min_interval_s": 0,
                "summary_delay_s": 0.3,
                "retry_delays_s": (0.3, 0.3, 0.3, 0.3),
                "poll_interval_s": 0.1,
            }
            | options
        ),
    )
    service = await Bus(bus_settings, name="notifier").connect()
    publisher = await Bus(bus_settings, name="test-events").connect()
    consumers = await build(service, settings)
    for consumer in consumers:
        await consumer.start()
    try:
        yield publisher
    finally:
        for consumer in consumers:
            await consumer.stop(2)
        await service.close()
        await publisher.close()


def _request(user: str, files: int) -> tuple[list[Event], RequestCompleted]:
    rid = uuid.uuid4()
    common = {"request_id": rid, "user": user}
    accepted = RequestAccepted(
        **common, rse="NB", files_total=files, bytes_total=files * 1000, files_available=0
    )
    visible: list[Event] = [
        FileVisible(
            **common, did=f"user.{user}:f{i}", rse="NB", pfn=f"root://o//f{i}",
            bytes=1000, cache_url=f"root://c//f{i}", path=f"/views/f{i}", mount_path="/m",
        )
        for i in range(files)
    ]  # fmt: skip
    done = RequestCompleted(
        **common,
        files_ready=files,
        files_failed=0,
        bytes_ready=files * 1000,
        duration_s=3,
    )
    return [accepted, *visible], done


async def _publish(bus: Bus, events: Sequence[Event]) -> None:
    for event in events:
        await bus.publish(event, correlation_id="test")


def _inbox(broker: Vhost, user: str) -> list[Notification]:
    """Take what the user's inbox holds (nothing while it does not exist)."""
    try:
        messages = broker.get_messages(f"dlaas.inbox.{user}", 500)
    except OSError:  # HTTP 404: not declared yet
        return []
    return [Notification.model_validate_json(str(m["payload"])) for m in messages]


def _body(mail: Message) -> str:
    return str(mail.get_payload()).replace("\r\n", "\n")


def _summed_up(received: Sequence[Message] | Sequence[dict[str, str]]) -> bool:
    texts = [_body(r) if isinstance(r, Message) else r["text"] for r in received]
    return any("files ready" in t and "Slowest" in t for t in texts)


def _user() -> str:
    return f"carol-{uuid.uuid4().hex[:6]}"


async def test_each_channel_gets_its_share_once(broker: Vhost) -> None:
    user, hook = _user(), Hook()
    port = _free_port()
    async with (
        smtp_server(port) as mailbox,
        hook_server(hook) as url,
        notifier(broker, user, port, url, bus={"prefetch": 1}) as bus,
    ):
        events, done = _request(user, 8)
        await _publish(bus, [*events, *events[3:6], done, done])  # repeats, as Rucio does
        await eventually(lambda: _summed_up(mailbox.mails) and _summed_up(hook.posts))
        await asyncio.sleep(0.5)  # nothing more comes
    # progress as it went (a step still unsent when the next is reached is replaced by it)
    mail_steps = [_body(m).split(" ", 1)[0] for m in mailbox.mails[:-1]]
    hook_steps = [p["text"].split("\n")[1].split(" ", 1)[0] for p in hook.posts[:-1]]
    for steps in (mail_steps, hook_steps):
        assert steps, "no progress told"
        assert steps == sorted(set(steps), key=int), steps
        assert set(steps) <= {"25", "50", "75"}
    assert mailbox.mails[0]["To"] == f"{user}@example.org"
    summary = _body(mailbox.mails[-1])
    assert "8 files ready (8.0 kB), 0 failed" in summary
    assert f"Slowest files:\n  user.{user}:f7  0.0 s\n" in summary
    assert "Slowest files" in hook.posts[-1]["text"]
    notes = _inbox(broker, user)
    assert [n.kind for n in notes].count("file-ready") == 8  # each file once
    assert [n.kind for n in notes].count("completed") == 1
    assert {n.kind for n in notes} == {"accepted", "file-ready", "completed"}


async def test_an_smtp_outage_delays_only_email(broker: Vhost) -> None:
    user, hook = _user(), Hook(statuses=[503])  # the webhook fails once too
    port = _free_port()  # nothing listens yet: connection refused
    async with hook_server(hook) as url, notifier(broker, user, port, url) as bus:
        events, done = _request(user, 2)
        await _publish(bus, [*events, done])
        await eventually(lambda: len(hook.posts) == 1)
        assert hook.calls == 2  # retried after the 503, delivered once
        async with smtp_server(port) as mailbox:
            await eventually(lambda: len(mailbox.mails) == 1)
            await asyncio.sleep(0.5)
    assert len(mailbox.mails) == 1
    assert "2 files ready" in _body(mailbox.mails[0])
    assert len(hook.posts) == 1


async def test_the_inbox_keeps_notifications_for_the_configured_time(
    broker: Vhost,
) -> None:
    user, ttl_days = _user(), 1.0 / 86_400  # one second
    async with notifier(
        broker,
        user,
        _free_port(),
        "http://127.0.0.1:9/",
        bus={"inbox_ttl_days": ttl_days},
    ) as bus:
        events, done = _request(user, 1)
        await _publish(bus, events)
        got: list[Notification] = []
        await eventually(lambda: len(got.__iadd__(_inbox(broker, user))) >= 2, 5)
        assert sorted(n.kind for n in got) == ["accepted", "file-ready"]
        assert _queue(broker, user)["arguments"]["x-message-ttl"] == 1000  # type: ignore[index]
        await _publish(bus, [done])
        await asyncio.sleep(2)
    assert _inbox(broker, user) == []  # expired while the user was away


def _queue(broker: Vhost, user: str) -> dict[str, object]:
    path = (
        f"/queues/{quote(broker.name, safe='')}/{quote(f'dlaas.inbox.{user}', safe='')}"
    )
    try:
        found = broker.admin.call("GET", path)
    except OSError:
        return {}
    return found if isinstance(found, dict) else {}
