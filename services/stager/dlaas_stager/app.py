"""Composition root of the stager: settings, adapters, handlers, queues."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer, Handler
from dlaas.bus.service import main as run_service
from dlaas.contracts import FileFailed, FileVisible, RuleRequested
from dlaas_stager.adapters.rucio import RucioCatalog
from dlaas_stager.handlers import Stager
from dlaas_stager.ports import Catalog
from dlaas_stager.settings import StagerSettings
from dlaas_stager.store import Store


async def build(
    bus: Bus, settings: StagerSettings, *, catalog: Catalog | None = None
) -> Sequence[Consumer]:
    """Wire the stager's consumers (tests pass their own catalog)."""
    store = Store(settings.stager.db_url)
    await store.init()
    bus.on_close(store.close)
    stager = Stager(bus, catalog or RucioCatalog(settings.rucio), store, settings.stager)
    hermes_handlers: dict[str, Handler] = {
        "transfer-done": stager.on_transfer_done,
        "transfer-failed": stager.on_transfer_failed,
        "rule_ok": stager.on_rule_ok,
        "datasetlock_ok": stager.on_rule_ok,
    }
    return [
        Consumer(
            bus,
            topology.STAGER_REQUESTS,
            decoders.events(RuleRequested),
            {RuleRequested.event_type: stager.on_rule_requested},
        ),
        Consumer(
            bus,
            topology.STAGER_HERMES,
            decoders.hermes(set(hermes_handlers)),
            hermes_handlers,
        ),
        Consumer(
            bus,
            topology.STAGER_PROGRESS,
            decoders.events(FileVisible, FileFailed),
            {
                FileVisible.event_type: stager.on_file_visible,
                FileFailed.event_type: stager.on_file_failed,
            },
        ),
    ]


def main() -> None:
    """``dlaas-stager``: one stager process."""
    settings = StagerSettings()
    run_service("stager", settings, lambda bus: build(bus, settings))
