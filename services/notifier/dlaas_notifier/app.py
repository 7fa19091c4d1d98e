"""Composition root of the notifier: store, channels, dispatchers, the consumer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer, Handler
from dlaas.bus.service import main as run_service
from dlaas.contracts import (
    FileFailed,
    FilePublished,
    FileVisible,
    RequestAccepted,
    RequestCancelled,
    RequestCompleted,
    RequestFailed,
    RuleRequested,
)
from dlaas.settings import ServiceSettings
from dlaas_notifier.adapters.email import SmtpSender
from dlaas_notifier.adapters.notebook import BusNotebook
from dlaas_notifier.adapters.webhook import WebhookSender
from dlaas_notifier.dispatch import Dispatcher
from dlaas_notifier.handlers import Notifier
from dlaas_notifier.outbox import Outbox
from dlaas_notifier.ports import Sender
from dlaas_notifier.settings import (
    ExternalChannel,
    NotifierOptions,
    NotifierSettings,
)
from dlaas_notifier.store import Store
from dlaas_notifier.tables import Database

REPORTED = (
    RequestAccepted,
    FileVisible,
    FilePublished,
    FileFailed,
    RequestCompleted,
    RequestFailed,
    RequestCancelled,
)
IN_MEMORY = "sqlite+aiosqlite://"


def _options(settings: ServiceSettings) -> NotifierOptions:
    """The notifier's section; plain service settings get defaults with in-memory state."""
    if isinstance(settings, NotifierSettings):
        return settings.notifier
    return NotifierOptions(db_url=IN_MEMORY)


def _senders(bus: Bus, options: NotifierOptions) -> dict[ExternalChannel, Sender]:
    client = httpx.AsyncClient(timeout=options.webhook_timeout_s)
    bus.on_close(client.aclose)
    return {"email": SmtpSender(options.smtp), "webhook": WebhookSender(client)}


async def build(
    bus: Bus,
    settings: ServiceSettings,
    *,
    senders: Mapping[ExternalChannel, Sender] | None = None,
) -> Sequence[Consumer]:
    """Wire the notifier's consumer and start its channel dispatchers (tests pass senders)."""
    options = _options(settings)
    db = Database(options.db_url)
    await db.create_tables()
    bus.on_close(db.close)
    store, outbox = Store(db), Outbox(db)
    dispatchers = [
        Dispatcher(channel, sender, store, outbox, options)
        for channel, sender in (senders or _senders(bus, options)).items()
    ]
    for dispatcher in dispatchers:
        dispatcher.start()
        bus.on_close(dispatcher.stop)  # closed before the engine: on_close runs LIFO
    notifier = Notifier(
        BusNotebook(bus), store, outbox, options, {d.channel: d.wake for d in dispatchers}
    )
    handlers: dict[str, Handler] = {m.event_type: notifier.on_event for m in REPORTED}
    handlers[RuleRequested.event_type] = notifier.on_rule_requested
    return [
        Consumer(
            bus,
            topology.NOTIFIER_EVENTS,
            decoders.events(*REPORTED, RuleRequested),
            handlers,
        ),
    ]


def main() -> None:
    """``dlaas-notifier``: one notifier process."""
    settings = NotifierSettings()
    run_service("notifier", settings, lambda bus: build(bus, settings))
