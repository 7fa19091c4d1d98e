"""The per-channel outbox: what e-mail and webhooks still owe, with retries and leases.

One row per (channel, request, key): a message enqueued twice goes out once. Each channel
has its own rows and its own dispatcher, so a channel that fails delays only itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa

from dlaas.contracts import Notification
from dlaas_notifier.tables import Database, outbox_t

PENDING, SENT, DEAD, DROPPED, SUPERSEDED = (
    "pending",
    "sent",
    "dead",
    "dropped",
    "superseded",
)


@dataclass(frozen=True)
class Outgoing:
    """A claimed message to send on one channel."""

    id: int
    channel: str
    user: str
    key: str
    note: Notification
    attempts: int  # failed attempts so far


class Outbox:
    """Outbox rows over SQLAlchemy's async engine."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = db.insert

    async def enqueue(
        self, channel: str, key: str, note: Notification, not_before: float
    ) -> bool:
        """Add a message unless this channel has it already; whether it was new."""
        row = {
            "channel": channel,
            "user": note.user,
            "request_id": str(note.request_id),
            "key": key,
            "note": note.model_dump_json(),
            "state": PENDING,
            "attempts": 0,
            "next_at": not_before,
        }
        async with self.db.begin() as conn:
            result = await conn.execute(
                self._insert(outbox_t).on_conflict_do_nothing(), [row]
            )
        return bool(result.rowcount)

    async def supersede_progress(self, request_id: UUID) -> None:
        """Progress not yet sent is moot once newer progress or the summary is on its way."""
        c = outbox_t.c
        async with self.db.begin() as conn:
            await conn.execute(
                outbox_t.update()
                .where(
                    c.request_id == str(request_id),
                    c.state == PENDING,
                    c.key.startswith("progress:"),
                )
                .values(state=SUPERSEDED)
            )

    async def claim_due(
        self, channel: str, now: float, lease_s: float, limit: int
    ) -> list[Outgoing]:
        """Lease up to ``limit`` due messages of ``channel`` (other replicas skip them)."""
        c = outbox_t.c
        free = sa.or_(c.lease_until.is_(None), c.lease_until < now)
        due = (
            sa.select(c.id)
            .where(c.channel == channel, c.state == PENDING, c.next_at <= now, free)
            .order_by(c.next_at, c.id)
            .limit(limit)
        )
        claimed: list[Outgoing] = []
        async with self.db.begin() as conn:
            for (row_id,) in (await conn.execute(due)).all():
                taken = await conn.execute(
                    outbox_t.update()
                    .where(c.id == row_id, free)
                    .values(lease_until=now + lease_s)
                    .returning(c.id, c.channel, c.user, c.key, c.note, c.attempts)
                )
                row = taken.first()
                if row is not None:
                    note = Notification.model_validate_json(row.note)
                    claimed.append(
                        Outgoing(
                            row.id, row.channel, row.user, row.key, note, row.attempts
                        )
                    )
        return claimed

    async def _set(self, row_id: int, **values: object) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                outbox_t.update()
                .where(outbox_t.c.id == row_id)
                .values(lease_until=None, **values)
            )

    async def sent(self, row_id: int, now: float) -> None:
        """Delivered."""
        await self._set(row_id, state=SENT, sent_at=now, error=None)

    async def retry(self, row_id: int, attempts: int, at: float, error: str) -> None:
        """Failed ``attempts`` times so far: try again at ``at``."""
        await self._set(row_id, attempts=attempts, next_at=at, error=error)

    async def postpone(self, row_id: int, at: float) -> None:
        """Not now (rate limit): try again at ``at``, without counting an attempt."""
        await self._set(row_id, next_at=at)

    async def close_row(self, row_id: int, state: str, error: str) -> None:
        """Stop trying (``DEAD``: it failed; ``DROPPED``: rate-limited progress)."""
        await self._set(row_id, state=state, error=error)

    async def sent_since(
        self, channel: str, user: str, since: float
    ) -> tuple[int, float]:
        """How many messages ``user`` got on ``channel`` after ``since``, and the first time."""
        c = outbox_t.c
        query = sa.select(sa.func.count(), sa.func.min(c.sent_at)).where(
            c.channel == channel, c.user == user, c.state == SENT, c.sent_at > since
        )
        async with self.db.connect() as conn:
            count, first = (await conn.execute(query)).one()
        return int(count), float(first or since)

    async def states(self, channel: str) -> dict[str, str]:
        """Key -> state of a channel's messages (for operators and tests)."""
        async with self.db.connect() as conn:
            rows = await conn.execute(
                sa.select(outbox_t.c.request_id, outbox_t.c.key, outbox_t.c.state).where(
                    outbox_t.c.channel == channel
                )
            )
            return {f"{r}/{k}": s for r, k, s in rows}
