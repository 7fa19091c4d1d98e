"""One dispatcher per external channel: sends due outbox rows, retries with backoff.

A failing channel only delays its own rows: each dispatcher is its own task with its own
rows, and a failed send is rescheduled (``retry_delays_s``) rather than blocking the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from dlaas.background import Background
from dlaas.logging import bound
from dlaas_notifier import aggregation
from dlaas_notifier.outbox import DEAD, DROPPED, Outbox, Outgoing
from dlaas_notifier.ports import DeliveryError, OutMessage, Sender
from dlaas_notifier.settings import ExternalChannel, NotifierOptions
from dlaas_notifier.store import Store

log = structlog.get_logger(__name__)


class Dispatcher:
    """Sends one channel's messages: rate limit per user, retries, leases."""

    def __init__(
        self,
        channel: ExternalChannel,
        sender: Sender,
        store: Store,
        outbox: Outbox,
        options: NotifierOptions,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.channel = channel
        self.sender = sender
        self.store = store
        self.outbox = outbox
        self.options = options
        self.clock = clock
        self._wake = asyncio.Event()
        self._task = Background()

    def start(self) -> None:
        """Run in the background until :meth:`stop`."""
        self._task.start(self._run, f"dispatch-{self.channel}")

    async def stop(self) -> None:
        """Stop sending (a message in hand is retried after its lease)."""
        await self._task.stop()

    def wake(self) -> None:
        """Something was enqueued: look now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                handled = await self.drain_once()
            except Exception:  # the store may be briefly unreachable: keep the loop
                log.exception("dispatch_failed", channel=self.channel)
                handled = 0
            if not handled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), self.options.poll_interval_s
                    )

    async def drain_once(self) -> int:
        """Send what is due now: users at once, each user's messages in order."""
        rows = await self.outbox.claim_due(
            self.channel, self.clock(), self.options.lease_s, self.options.concurrency
        )
        by_user: dict[str, list[Outgoing]] = {}
        for row in rows:
            by_user.setdefault(row.user, []).append(row)
        await asyncio.gather(*(self._in_turn(mine) for mine in by_user.values()))
        return len(rows)

    async def _in_turn(self, rows: list[Outgoing]) -> None:
        for row in rows:
            await self._deliver(row)

    async def _deliver(self, row: Outgoing) -> None:
        with bound(
            channel=self.channel, user=row.user, request_id=str(row.note.request_id)
        ):
            user = self.options.users.get(row.user)
            address = None if user is None else user.address(self.channel)
            if address is None:
                await self.outbox.close_row(row.id, DEAD, "no address configured")
                log.warning("channel_unconfigured", key=row.key)
            elif await self._rate_limited(row):
                return
            else:
                await self._send(row, address, await self._message(row))

    async def _rate_limited(self, row: Outgoing) -> bool:
        """Over the user's budget: progress is dropped, a summary waits for room."""
        now, window = self.clock(), self.options.rate_limit_window_s
        count, first = await self.outbox.sent_since(self.channel, row.user, now - window)
        if count < self.options.rate_limit_count:
            return False
        if row.note.kind == "progress":
            await self.outbox.close_row(row.id, DROPPED, "rate limited")
        else:
            await self.outbox.postpone(row.id, first + window)
        log.info("rate_limited", key=row.key, sent_in_window=count)
        return True

    async def _message(self, row: Outgoing) -> OutMessage:
        note, k = row.note, self.options.slowest_files
        if note.kind not in aggregation.SUMMARIES or not k:
            return aggregation.render(note)
        slowest = await self.store.files(note.request_id, "file-ready", k)
        failed = await self.store.files(note.request_id, "file-failed", k)
        return aggregation.render(note, slowest, failed)

    async def _send(self, row: Outgoing, address: str, message: OutMessage) -> None:
        try:
            await self.sender.send(address, message)
        except DeliveryError as exc:
            await self._failed(row, exc)
            return
        await self.outbox.sent(row.id, self.clock())
        log.info("channel_sent", key=row.key, kind=row.note.kind)

    async def _failed(self, row: Outgoing, exc: DeliveryError) -> None:
        attempts = row.attempts + 1
        delay = aggregation.backoff(attempts, self.options.retry_delays_s)
        if exc.permanent or delay is None:
            await self.outbox.close_row(row.id, DEAD, str(exc))
            log.error("channel_gave_up", key=row.key, reason=str(exc), attempts=attempts)
            return
        await self.outbox.retry(row.id, attempts, self.clock() + delay, str(exc))
        log.warning("channel_retry", key=row.key, reason=str(exc), delay_s=delay)
