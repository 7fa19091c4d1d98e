"""The user's dlaas notifications, numbered and kept in memory for front ends that long-poll.

One ``Relay`` per Jupyter server (one server per user). The consumer adds what arrives on the
broker; every browser tab asks for what came after the last number it saw and waits, here on the
local server, until something new arrives (no polling of Rucio or of the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TypedDict
from uuid import uuid4

from pydantic import ValidationError

from dlaas.contracts import Notification

JsonDict = dict[str, object]


class Batch(TypedDict):
    """What one long-poll answers: the items after the cursor and the link's state."""

    epoch: str
    cursor: int
    notifications: list[JsonDict]
    status: JsonDict


@dataclass(frozen=True)
class Status:
    """Whether the relay is consuming from the broker, and why not."""

    user: str
    connected: bool = False
    error: str | None = None

    def as_json(self) -> JsonDict:
        """The status as the front end reads it."""
        return {"user": self.user, "connected": self.connected, "error": self.error}


class Relay:
    """Numbered notifications of one user; ``epoch`` changes when the server restarts."""

    def __init__(self, user: str, *, keep: int = 1000) -> None:
        self.epoch = uuid4().hex
        self.status = Status(user)
        self._items: deque[tuple[int, JsonDict]] = deque(maxlen=keep)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._keep = keep
        self._seq = 0
        self._changed = asyncio.Event()

    @property
    def user(self) -> str:
        """The broker login whose notifications this relay holds."""
        return self.status.user

    def receive(self, body: bytes) -> Notification | None:
        """Take one message body; the notification if it is new and ours, else None."""
        try:
            note = Notification.model_validate_json(body)
        except ValidationError:
            return None
        # The broker binds only our routing keys; this guards against a misconfigured vhost.
        if note.user != self.user:
            return None
        return note if self.add(note) else None

    def add(self, note: Notification) -> bool:
        """Number and keep ``note``; False for a repeat of one already kept."""
        # The notifier may report the same source event twice (hermes repeats): one toast.
        key = f"{note.request_id}:{note.source_event_id}:{note.kind}:{note.did or ''}"
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > 4 * self._keep:
            self._seen.popitem(last=False)
        self._seq += 1
        self._items.append(
            (self._seq, {"seq": self._seq, **note.model_dump(mode="json")})
        )
        self._wake()
        return True

    def set_status(self, *, connected: bool, error: str | None = None) -> None:
        """Record the link's state; waiting front ends learn it at once."""
        status = Status(self.user, connected, error)
        if status != self.status:
            self.status = status
            self._wake()

    def batch(self, epoch: str, after: int) -> Batch:
        """Items after ``after`` (all kept items when ``epoch`` is not ours)."""
        start = after if epoch == self.epoch else 0
        return Batch(
            epoch=self.epoch,
            cursor=self._seq,
            notifications=[item for seq, item in self._items if seq > start],
            status=self.status.as_json(),
        )

    async def wait(self, epoch: str, after: int, timeout: float) -> Batch:
        """:meth:`batch`, waiting up to ``timeout`` seconds for something new."""
        batch = self.batch(epoch, after)
        if batch["notifications"] or epoch != self.epoch or timeout <= 0:
            return batch
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return self.batch(epoch, after)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
