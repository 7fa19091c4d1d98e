"""The notifier without a broker: dedupe, aggregation, retries, rate limits, permissions."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import ClassVar
from uuid import UUID, uuid4

import httpx
import pytest
from pydantic import Field

from dlaas.bus.consumer import Delivery
from dlaas.contracts import (
    FileFailed,
    FileVisible,
    Notification,
    RequestAccepted,
    RequestCompleted,
    RuleRequested,
)
from dlaas.errors import PermanentError
from dlaas_notifier import aggregation, domain
from dlaas_notifier.adapters.webhook import WebhookSender
from dlaas_notifier.dispatch import Dispatcher
from dlaas_notifier.handlers import Notifier
from dlaas_notifier.outbox import Outbox
from dlaas_notifier.permissions import user_grant
from dlaas_notifier.ports import DeliveryError, OutMessage
from dlaas_notifier.settings import NotifierOptions, NotifierSettings, UserChannels
from dlaas_notifier.store import Store
from dlaas_notifier.tables import Database

MEMORY = "sqlite+aiosqlite://"
DELIVERY = Delivery("notifier.events", 1, 3, None, "corr", "dlaas-svc", None)
ALICE = UserChannels(email="alice@example.org", webhook="http://hook.example/a")


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeNotebook:
    told: list[Notification] = field(default_factory=list)

    async def publish(self, note: Notification, correlation_id: str | None) -> None:
        self.told.append(note)


@dataclass
class FakeSender:
    sent: list[tuple[str, OutMessage]] = field(default_factory=list)
    failures: list[DeliveryError] = field(default_factory=list)

    async def send(self, address: str, message: OutMessage) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((address, message))

    @property
    def subjects(self) -> list[str]:
        return [m.subject.split(" ", 3)[-1] for _, m in self.sent]


@dataclass
class Rig:
    notifier: Notifier
    notebook: FakeNotebook
    email: FakeSender
    webhook: FakeSender
    dispatchers: list[Dispatcher]
    outbox: Outbox
    clock: Clock

    async def drain(self) -> None:
        for dispatcher in self.dispatchers:
            await dispatcher.drain_once()


def _options(**overrides: object) -> NotifierOptions:
    base: dict[str, object] = {
        "db_url": MEMORY,
        "users": {"alice": ALICE},
        "progress_min_files": 4,
        "progress_min_interval_s": 0,
        "summary_delay_s": 0,
        "retry_delays_s": (1, 2),
        "slowest_files": 2,
    }
    return NotifierOptions.model_validate(base | overrides)


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    options = _options(**getattr(request, "param", {}))
    db = Database(MEMORY)
    await db.create_tables()
    store, outbox, clock = Store(db), Outbox(db), Clock()
    email, webhook, notebook = FakeSender(), FakeSender(), FakeNotebook()
    dispatchers = [
        Dispatcher("email", email, store, outbox, options, clock=clock),
        Dispatcher("webhook", webhook, store, outbox, options, clock=clock),
    ]
    notifier = Notifier(notebook, store, outbox, options, clock=clock)
    yield Rig(notifier, notebook, email, webhook, dispatchers, outbox, clock)
    await db.close()


RID = UUID("12345678-0000-4000-8000-000000000000")


def _accepted(n: int, at: float = 1_000.0) -> RequestAccepted:
    return RequestAccepted.model_validate(
        {"request_id": RID, "user": "alice", "rse": "NB", "files_total": n}
        | {"bytes_total": 100 * n, "files_available": 0, "occurred_at": at}
    )


def _visible(i: int, at: float = 1_010.0) -> FileVisible:
    return FileVisible.model_validate(
        {"request_id": RID, "user": "alice", "did": f"s:f{i}", "rse": "NB", "pfn": "p"}
        | {"bytes": 100, "cache_url": "c", "path": f"/v/f{i}", "mount_path": "/m"}
        | {"occurred_at": at}
    )


def _completed(ready: int, failed: int = 0) -> RequestCompleted:
    return RequestCompleted(
        request_id=RID,
        user="alice",
        files_ready=ready,
        files_failed=failed,
        bytes_ready=100 * ready,
        duration_s=42,
    )


async def _run(rig: Rig, *events: object, drain: bool = True) -> None:
    for event in events:
        await rig.notifier.on_event(event, DELIVERY)  # type: ignore[arg-type]
        if drain:
            await rig.drain()


async def test_a_repeated_fact_is_told_and_counted_once(rig: Rig) -> None:
    await _run(rig, _accepted(2), _visible(0), _visible(0), _visible(1), _completed(2))
    await _run(rig, _completed(2))
    kinds = [n.kind for n in rig.notebook.told]
    assert kinds == ["accepted", "file-ready", "file-ready", "completed"]
    assert rig.email.subjects == ["completed"]  # two files: no progress, one summary
    assert rig.webhook.subjects == ["completed"]


async def test_copies_of_a_fact_handled_at_once_are_told_once(rig: Rig) -> None:
    """Two copies of an event (an upstream repeat, two replicas) race: one tells it."""
    await _run(rig, _accepted(2))
    copies = [_visible(0) for _ in range(4)]
    await asyncio.gather(*(rig.notifier.on_event(c, DELIVERY) for c in copies))
    assert [n.kind for n in rig.notebook.told] == ["accepted", "file-ready"]


async def test_a_redelivered_fact_is_told_again_rather_than_lost(rig: Rig) -> None:
    """Taken by a handling that died before telling: the redelivery tells it."""
    await _run(rig, _accepted(2))
    note = domain.notification_for(_visible(0))
    await rig.notifier.store.record(note, 1_010.0)
    assert await rig.notifier.store.claim_notify(note)  # then the process died
    await rig.notifier.on_event(_visible(0), replace(DELIVERY, redelivered=True))
    await rig.notifier.on_event(_visible(0), DELIVERY)  # a plain repeat: not again
    assert [n.kind for n in rig.notebook.told] == ["accepted", "file-ready"]


async def test_progress_at_steps_then_one_summary_with_slowest_files(rig: Rig) -> None:
    failed = FileFailed(
        request_id=RID, user="alice", did="s:bad", reason="no source", stage="rucio"
    )
    files = [_visible(i, at=1_010.0 + i) for i in range(7)]
    await _run(rig, _accepted(8), *files, failed, _completed(7, 1))
    assert rig.email.subjects == ["progress", "progress", "progress", "completed"]
    texts = [m.text for _, m in rig.email.sent]
    assert [t.split(" ", 1)[0] for t in texts[:3]] == ["25", "50", "75"]
    summary = texts[-1]
    assert "7 files ready (700 B), 1 failed" in summary
    assert "Slowest files:\n  s:f6  16.0 s\n  s:f5  15.0 s\n" in summary
    assert "Failed files:\n  s:bad: no source" in summary
    assert len(rig.notebook.told) == 10  # every per-file fact, on the notebook only


async def test_pending_progress_is_superseded_by_the_summary(rig: Rig) -> None:
    await _run(rig, _accepted(4), *(_visible(i) for i in range(4)), drain=False)
    await _run(rig, _completed(4))
    assert rig.email.subjects == ["completed"]


@pytest.mark.parametrize("rig", [{"progress_min_interval_s": 600}], indirect=True)
async def test_progress_at_most_once_per_interval(rig: Rig) -> None:
    await _run(rig, _accepted(8), *(_visible(i) for i in range(5)))
    rig.clock.now += 600
    await _run(rig, _visible(5), _visible(6))
    texts = [m.text.split(" ", 1)[0] for _, m in rig.email.sent]
    assert texts == ["25", "75"]


async def test_a_failing_channel_retries_with_backoff_and_blocks_no_other(
    rig: Rig,
) -> None:
    rig.email.failures = [DeliveryError("down"), DeliveryError("down")]
    await _run(rig, _accepted(1), _visible(0), _completed(1))
    assert rig.webhook.subjects == ["completed"]
    assert rig.email.sent == []
    await rig.drain()  # not due yet (1 s backoff)
    assert rig.email.failures
    rig.clock.now += 1
    await rig.drain()  # second failure: next try in 2 s
    rig.clock.now += 1.5
    await rig.drain()
    assert rig.email.sent == []
    rig.clock.now += 0.5
    await rig.drain()
    assert rig.email.subjects == ["completed"]
    assert rig.webhook.subjects == ["completed"]


async def test_a_permanent_failure_or_exhausted_retries_give_up(rig: Rig) -> None:
    rig.email.failures = [DeliveryError("550 no such user", permanent=True)]
    rig.webhook.failures = [DeliveryError("down")] * 3
    await _run(rig, _accepted(1), _visible(0), _completed(1))
    for _ in range(3):
        rig.clock.now += 5
        await rig.drain()
    assert rig.email.sent == rig.webhook.sent == []
    states = {**await rig.outbox.states("email"), **await rig.outbox.states("webhook")}
    assert set(states.values()) == {"dead"}


@pytest.mark.parametrize(
    "rig", [{"rate_limit_count": 2, "rate_limit_window_s": 100}], indirect=True
)
async def test_rate_limit_drops_progress_and_delays_the_summary(rig: Rig) -> None:
    await _run(rig, _accepted(8), *(_visible(i) for i in range(7)))
    await _run(rig, _visible(7), _completed(8))
    assert rig.email.subjects == ["progress", "progress"]
    rig.clock.now += 100
    await rig.drain()
    assert rig.email.subjects == ["progress", "progress", "completed"]


class ChosenRuleRequested(RuleRequested):
    """RuleRequested with the proposed optional ``channels`` field."""

    event_type: ClassVar[str] = RuleRequested.event_type
    channels: list[str] | None = Field(default=None, description="Channels chosen")


async def test_a_request_chooses_among_the_users_channels(rig: Rig) -> None:
    chosen = ChosenRuleRequested(
        request_id=RID, user="alice", dids=["s:ds"], rse="NB", channels=["webhook", "sms"]
    )
    await rig.notifier.on_rule_requested(chosen, DELIVERY.__class__(
        **{**DELIVERY.__dict__, "user_id": "alice"}
    ))  # fmt: skip
    await _run(rig, _accepted(1), _visible(0), _completed(1))
    assert rig.webhook.subjects == ["completed"]
    assert rig.email.sent == []


async def test_a_forged_request_choice_is_refused(rig: Rig) -> None:
    forged = RuleRequested(request_id=uuid4(), user="alice", dids=["s:d"], rse="NB")
    with pytest.raises(PermanentError, match="published by 'bob'"):
        await rig.notifier.on_rule_requested(
            forged, Delivery("q", 1, 3, None, None, "bob", None)
        )


def test_channels_read_defensively() -> None:
    assert aggregation.requested_channels(None) is None
    assert aggregation.requested_channels("email") is None
    assert aggregation.requested_channels(["WEBHOOK", "sms"]) == ("webhook",)
    assert aggregation.channels_for(None, None) == ()
    only_mail = UserChannels(email="a@x")
    assert aggregation.channels_for(only_mail, None) == ("email",)
    assert aggregation.channels_for(only_mail, ("webhook",)) == ()
    assert aggregation.backoff(1, (5, 30)) == 5
    assert aggregation.backoff(3, (5, 30)) is None


def test_users_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    users = {"alice": {"email": "a@x", "webhook": "http://h/1", "channels": ["email"]}}
    monkeypatch.setenv("DLAAS_NOTIFIER__USERS", json.dumps(users))
    monkeypatch.setenv("DLAAS_NOTIFIER__SMTP__PORT", "2525")
    options = NotifierSettings().notifier
    assert options.smtp.port == 2525
    alice = options.users["alice"]
    assert alice.defaults() == ("email",)
    assert "http://h/1" not in repr(alice)  # the hook's URL is a secret


async def test_webhook_posts_text_and_classifies_failures() -> None:
    seen: list[dict[str, str]] = []
    answers = iter([200, 500, 429, 404])

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(next(answers))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        sender = WebhookSender(client)
        message = OutMessage("[dlaas] done", "3 files ready")
        await sender.send("http://hook/x", message)
        for permanent in (False, False, True):
            with pytest.raises(DeliveryError) as caught:
                await sender.send("http://hook/x", message)
            assert caught.value.permanent is permanent
            assert "hook/x" not in str(caught.value)
    assert seen[0] == {"text": "**[dlaas] done**\n3 files ready"}


def test_user_grant_confines_a_user_to_their_own_names() -> None:
    alice, dotted = user_grant("alice"), user_grant("alice.b")
    notify = {t.exchange: t for t in alice.topics}["dlaas.notify"]
    events = {t.exchange: t for t in alice.topics}["dlaas.events"]
    assert re.match(notify.read, "user.alice.1234")
    for other in ("user.bob.1", "user.alice~b.1", "user.#", "#", "user.*.*"):
        assert not re.match(notify.read, other), other
    assert not re.match(notify.write, "user.alice.1")
    assert re.match(events.write, "client.rule-requested.v1")
    assert not re.match(events.write, "stager.request-accepted.v1")
    assert re.match(alice.read, "dlaas.inbox.alice")
    assert re.match(alice.read, "amq.gen-AbC")
    assert re.match(alice.configure, "amq_" + uuid4().hex)
    assert not re.match(alice.configure, "amq_x")
    for queue in ("dlaas.inbox.alice.b", "dlaas.inbox.bob", "notifier.events"):
        assert not re.match(alice.read, queue), queue
    assert re.match(dotted.read, "dlaas.inbox.alice.b")
    assert not re.match(dotted.read, "dlaas.inbox.alice")
    assert not re.match(alice.write, "dlaas.notify")
    assert not re.match(alice.configure, "dlaas.notify")  # no right to delete it either
    assert re.match(user_grant("bob", declares_exchanges=True).configure, "dlaas.notify")
    with pytest.raises(ValueError, match="not a dlaas user name"):
        user_grant(".*")
