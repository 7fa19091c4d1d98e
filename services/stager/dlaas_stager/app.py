"""Composition root of the stager: settings, adapters, handlers, queues, the watchdog."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import InterfaceError, OperationalError

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer, Handler
from dlaas.bus.service import main as run_service
from dlaas.contracts import (
    CancelRequested,
    FileFailed,
    FileVisible,
    PublishRequested,
    RuleRequested,
    StatusRequested,
)
from dlaas_stager.adapters.rucio import RucioCatalog
from dlaas_stager.handlers import Stager
from dlaas_stager.instances import Instances
from dlaas_stager.ports import Catalog
from dlaas_stager.rucio_events import RucioEvents
from dlaas_stager.settings import StagerSettings
from dlaas_stager.staging import Announcer
from dlaas_stager.status import StatusReporter
from dlaas_stager.store import Store
from dlaas_stager.watchdog import Watchdog

# A busy or unreachable state store delays a message (retry with backoff), never loses it.
DATABASE_AWAY = (OperationalError, InterfaceError)


async def build(
    bus: Bus, settings: StagerSettings, *, catalog: Catalog | None = None
) -> Sequence[Consumer]:
    """Wire the stager's consumers (tests pass their own catalog)."""
    options = settings.stager
    store = Store(options.db_url, default_instance=options.default_instance)
    await store.init()
    bus.on_close(store.close)
    instances = Instances(
        options.default_instance,
        {options.default_instance: settings.rucio, **settings.instances},
        RucioCatalog,
        file=settings.instances_file,
        batch_window_s=options.batch_window_s,
        catalogs={options.default_instance: catalog} if catalog else None,
    )
    announcer = Announcer(bus, store)
    stager = Stager(bus, instances, store, announcer, options)
    rucio = RucioEvents(instances, store, announcer, options.available_recheck_s)
    watchdog = Watchdog(
        instances, store, announcer, options.watchdog_interval_s, options.watchdog_after_s
    )
    watchdog.start()
    bus.on_close(watchdog.stop)
    hermes: dict[str, Handler] = {
        "transfer-done": rucio.on_transfer_done,
        "transfer-failed": rucio.on_transfer_failed,
        "rule_ok": rucio.on_rule_ok,
        "datasetlock_ok": rucio.on_rule_ok,
    }
    return [
        Consumer(bus, topology.STAGER_REQUESTS,
                 decoders.events(RuleRequested, CancelRequested, StatusRequested,
                                 PublishRequested),
                 {RuleRequested.event_type: stager.on_rule_requested,
                  CancelRequested.event_type: stager.on_cancel_requested,
                  StatusRequested.event_type: StatusReporter(bus, store).on_status_requested,
                  PublishRequested.event_type: stager.on_publish_requested},
                 transient=DATABASE_AWAY),
        Consumer(bus, topology.STAGER_HERMES, decoders.hermes(set(hermes)), hermes,
                 transient=DATABASE_AWAY),
        Consumer(bus, topology.STAGER_PROGRESS, decoders.events(FileVisible, FileFailed),
                 {FileVisible.event_type: stager.on_file_visible,
                  FileFailed.event_type: stager.on_file_failed},
                 transient=DATABASE_AWAY),
    ]  # fmt: skip


def main() -> None:
    """``dlaas-stager``: one stager process."""
    settings = StagerSettings()
    run_service("stager", settings, lambda bus: build(bus, settings))
