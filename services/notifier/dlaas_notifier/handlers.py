"""The notifier's handlers: every event of a request goes to its user, and only to them.

The notebook channel gets every fact at once (per file too), once per fact. E-mail and
webhooks get progress at steps and one summary per request, through the outbox.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import structlog
from sqlalchemy import exc as sa_exc

from dlaas.bus.consumer import Delivery
from dlaas.contracts import Notification, RequestEvent, RuleRequested
from dlaas.errors import PermanentError, TransientError
from dlaas.logging import bound
from dlaas_notifier import aggregation, domain
from dlaas_notifier.aggregation import RequestState
from dlaas_notifier.outbox import Outbox
from dlaas_notifier.ports import Notebook
from dlaas_notifier.settings import ExternalChannel, NotifierOptions
from dlaas_notifier.store import Store

log = structlog.get_logger(__name__)


@contextlib.contextmanager
def _store_may_recover() -> Iterator[None]:
    """A locked or unreachable database is worth a retry, not a dead letter."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise TransientError(f"notifier store unavailable: {exc.orig}") from exc


@dataclass
class Notifier:
    """Handlers with their dependencies (the composition root builds one)."""

    notebook: Notebook
    store: Store
    outbox: Outbox
    options: NotifierOptions
    wake: Mapping[ExternalChannel, Callable[[], None]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    async def on_rule_requested(self, event: RuleRequested, delivery: Delivery) -> None:
        """Remember when a request started and the channels it chose (if it chose)."""
        if delivery.user_id != event.user:
            raise PermanentError(
                f"request of {event.user!r} published by {delivery.user_id!r}: refused"
            )
        # ``channels`` is optional and newer than RuleRequested v1: read it defensively
        chosen = aggregation.requested_channels(getattr(event, "channels", None))
        at = event.occurred_at.timestamp()
        with _store_may_recover():
            await self.store.choose_channels(event.request_id, event.user, chosen, at)

    async def on_event(self, event: RequestEvent, delivery: Delivery) -> None:
        """Tell the user on the notebook channel (once per fact), then queue the others."""
        note = domain.notification_for(event)
        with (
            bound(user=event.user, request_id=str(event.request_id), kind=note.kind),
            _store_may_recover(),
        ):
            recorded, claimed = await self.store.record_and_claim(
                note, event.occurred_at.timestamp()
            )
            if claimed:
                await self._tell(note, delivery, claimed=True)
            elif delivery.redelivered and not await self.store.told(note):
                # taken by a handling that died before its telling was confirmed: tell (a
                # client takes a repeated fact as a no-op; losing it would be worse)
                await self._tell(note, delivery, claimed=False)
            else:
                log.info("repeat_ignored", did=note.did)
            await self._fan_out(note, recorded.state)

    async def _tell(
        self, note: Notification, delivery: Delivery, *, claimed: bool
    ) -> None:
        try:
            await self.notebook.publish(note, delivery.correlation_id)
        except BaseException:
            if claimed:  # the next attempt tells it
                await self.store.unclaim_notify(note)
            raise
        await self.store.mark_notified(
            note
        )  # confirmed: a redelivery need not tell again
        log.debug("notified", channel="notebook", did=note.did)

    async def _fan_out(self, note: Notification, state: RequestState) -> None:
        """Queue progress or the summary for the request's e-mail and webhook channels."""
        user = self.options.users.get(note.user)
        channels = aggregation.channels_for(user, state.channels)
        if not channels:
            return
        now = self.clock()
        if note.kind in aggregation.SUMMARIES:
            await self.outbox.supersede_progress(note.request_id)
            await self._enqueue(channels, note, now + self.options.summary_delay_s)
            return
        step = aggregation.progress_step(
            state, self.options.progress_steps_pct, self.options.progress_min_files
        )
        if step is not None and await self.store.claim_progress(
            note.request_id, step, now, self.options.progress_min_interval_s
        ):
            await self.outbox.supersede_progress(note.request_id)  # at most one pending
            await self._enqueue(channels, aggregation.progress_note(state, step), now)

    async def _enqueue(
        self, channels: tuple[ExternalChannel, ...], note: Notification, at: float
    ) -> None:
        key = aggregation.outbox_key(note)
        for channel in channels:
            if await self.outbox.enqueue(channel, key, note, at):
                log.info("queued", channel=channel, key=key)
                if channel in self.wake:
                    self.wake[channel]()
