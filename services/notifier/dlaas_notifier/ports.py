"""What the notifier needs from the outside: a way to send on each channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dlaas.contracts import Notification


@dataclass(frozen=True)
class OutMessage:
    """One message for a person: a subject line and a body of plain text."""

    subject: str
    text: str


class DeliveryError(Exception):
    """A channel could not deliver; ``permanent`` when retrying cannot help."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Sender(Protocol):
    """An external channel (e-mail, webhook): delivers or raises :class:`DeliveryError`."""

    async def send(self, address: str, message: OutMessage) -> None:
        """Deliver ``message`` to ``address`` (an e-mail address, a webhook URL)."""
        ...


class Notebook(Protocol):
    """The notebook/CLI channel: the user's routing key and inbox."""

    async def publish(self, note: Notification, correlation_id: str | None) -> None:
        """Publish ``note`` for its user only (raises ``TransientError`` to retry)."""
        ...
