"""The notebook/CLI channel: the user's routing key on ``dlaas.notify`` and their inbox."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.contracts import Notification


@dataclass
class BusNotebook:
    """Publishes on the user's routing key after making sure their inbox exists."""

    bus: Bus
    _inboxes: set[str] = field(default_factory=set)

    async def publish(self, note: Notification, correlation_id: str | None) -> None:
        """Publish for ``note.user`` only: their live clients and their inbox get it."""
        if note.user not in self._inboxes:
            # the inbox must exist before publishing, or an offline user's message is dropped
            await topology.declare_inbox(self.bus.channel, note.user, self.bus.settings)
            self._inboxes.add(note.user)
        await self.bus.publish(
            note,
            exchange=topology.NOTIFY,
            routing_key=topology.notify_routing_key(note.user, str(note.request_id)),
            correlation_id=correlation_id,
        )
