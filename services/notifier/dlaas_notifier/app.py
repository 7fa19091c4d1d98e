"""Composition root of the notifier."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.service import main as run_service
from dlaas.contracts import (
    FileFailed,
    FileVisible,
    RequestAccepted,
    RequestCancelled,
    RequestCompleted,
    RequestFailed,
)
from dlaas.settings import ServiceSettings
from dlaas_notifier.handlers import Notifier

REPORTED = (
    RequestAccepted,
    FileVisible,
    FileFailed,
    RequestCompleted,
    RequestFailed,
    RequestCancelled,
)


async def build(bus: Bus, _: ServiceSettings) -> Sequence[Consumer]:
    """Wire the notifier's consumers."""
    notifier = Notifier(bus)
    return [
        Consumer(
            bus,
            topology.NOTIFIER_EVENTS,
            decoders.events(*REPORTED),
            {model.event_type: notifier.on_event for model in REPORTED},
        ),
    ]


def main() -> None:
    """``dlaas-notifier``: one notifier process."""
    settings = ServiceSettings()
    run_service("notifier", settings, lambda bus: build(bus, settings))
