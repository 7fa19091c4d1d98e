"""The notifier's handlers: every event of a request goes to its user, and only to them."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import RequestEvent
from dlaas_notifier import domain

log = structlog.get_logger(__name__)


@dataclass
class Notifier:
    """Handlers with their dependencies."""

    bus: Bus
    _inboxes: set[str] = field(default_factory=set)

    async def on_event(self, event: RequestEvent, delivery: Delivery) -> None:
        """Tell the event's user, on their routing key (their inbox and live clients)."""
        note = domain.notification_for(event)
        if event.user not in self._inboxes:
            # the inbox must exist before publishing, or an offline user's message is dropped
            await topology.declare_inbox(self.bus.channel, event.user, self.bus.settings)
            self._inboxes.add(event.user)
        await self.bus.publish(
            note,
            exchange=topology.NOTIFY,
            routing_key=topology.notify_routing_key(event.user, str(event.request_id)),
            correlation_id=delivery.correlation_id,
        )
        log.info(
            "notified",
            user=event.user,
            request_id=str(event.request_id),
            kind=note.kind,
            did=note.did,
        )
