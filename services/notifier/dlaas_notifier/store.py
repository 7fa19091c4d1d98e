"""What the notifier remembers of requests: counts, per-file times, facts already told.

A fact (``accepted``, ``file-ready:<did>``, ``completed``...) is recorded once per request
with insert-or-ignore, so a repeated event neither counts twice nor is told twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dlaas.contracts import Notification
from dlaas.db import Prepared
from dlaas.grouping import GroupRunner
from dlaas_notifier.aggregation import PER_FILE, FileTime, RequestState, fact_key
from dlaas_notifier.settings import EXTERNAL_CHANNELS, ExternalChannel
from dlaas_notifier.tables import Database, facts_t, requests_t


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording a fact."""

    first: bool  # never seen before (counted now)
    state: RequestState


def _counters(note: Notification, at: float) -> dict[str, Any]:
    """Column updates of a request-wide fact seen for the first time.

    Per-file facts are summed by :func:`_sums` instead.
    """
    c = requests_t.c
    match note.kind:
        case "accepted":
            return {"files_total": note.files_total, "started_at": _earliest(at)}
        case "completed":
            total = (note.files_ready or 0) + (note.files_failed or 0)
            return {"files_total": sa.func.coalesce(c.files_total, total)}
    return {}


def _earliest(at: float) -> sa.ColumnElement[Any]:
    started = requests_t.c.started_at
    return sa.case((started.is_(None), at), (started > at, at), else_=started)


def _sums(
    firsts: Sequence[tuple[Notification, float]],
) -> dict[str, tuple[int, int, int]]:
    """Per request: files ready, files failed and bytes ready of per-file facts seen first."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for note, _ in firsts:
        if note.kind in PER_FILE:
            counted = sums[str(note.request_id)]
            counted[note.kind == "file-failed"] += 1
            counted[2] += 0 if note.kind == "file-failed" else (note.bytes or 0)
    return {rid: (ready, failed, nbytes) for rid, (ready, failed, nbytes) in sums.items()}


def _count_others(
    conn: sa.Connection, firsts: Sequence[tuple[Notification, float]]
) -> None:
    """Counter updates of request-wide facts seen first (accepted, completed...)."""
    c = requests_t.c
    for note, at in firsts:
        updates = _counters(note, at)
        if updates:
            conn.execute(
                requests_t.update()
                .where(c.request_id == str(note.request_id))
                .values(**updates)
            )


# the hot path's statements, built once: SQLAlchemy then only binds values
_rc, _fc = requests_t.c, facts_t.c


def _of_facts(*, one: bool) -> sa.ColumnElement[bool]:
    """Facts by key.

    One fact by ``f_rid`` and ``f_key``: a statement cached whole (lists are "expanding"
    parameters, rendered into its text again at every execution). Many through the
    primary key (a tuple IN alone scans the table in SQLite).
    """
    if one:
        return sa.and_(
            _fc.request_id == sa.bindparam("f_rid"), _fc.key == sa.bindparam("f_key")
        )
    return sa.and_(
        _fc.request_id.in_(sa.bindparam("rids", expanding=True)),
        _fc.key.in_(sa.bindparam("keys", expanding=True)),
        sa.tuple_(_fc.request_id, _fc.key).in_(sa.bindparam("pairs", expanding=True)),
    )


# each for one fact (True: the lone event's case, run straight on SQLite's cursor) and
# for many facts (False)
_MARK = {
    one: facts_t.update().where(_of_facts(one=one)).values(notified=True, told=True)
    for one in (False, True)
}
_MARK_ONE = Prepared(_MARK[True])
_TOLD = sa.select(_fc.told).where(
    _fc.request_id == sa.bindparam("rid"), _fc.key == sa.bindparam("key")
)
# take the telling of a fact: of two handlers holding the same fact, one gets it
_CLAIM = {
    one: facts_t.update()
    .where(_of_facts(one=one), _fc.notified.is_(False))
    .values(notified=True)
    .returning(_fc.request_id, _fc.key)
    for one in (False, True)
}
_CLAIM_ONE = Prepared(_CLAIM[True])
_STATES = {
    False: sa.select(requests_t).where(
        _rc.request_id.in_(sa.bindparam("rids", expanding=True))
    ),
    True: sa.select(requests_t).where(_rc.request_id == sa.bindparam("rid")),
}
_STATE_ONE = Prepared(_STATES[True])


def _facts(keys: Sequence[tuple[str, str]]) -> tuple[bool, dict[str, Any]]:
    """Whether these are one fact, and the parameters of the statements for them."""
    pairs = sorted(set(keys))
    if len(pairs) == 1:
        return True, {"f_rid": pairs[0][0], "f_key": pairs[0][1]}
    return False, {
        "rids": sorted({rid for rid, _ in pairs}),
        "keys": sorted({key for _, key in pairs}),
        "pairs": pairs,
    }


def _mark_notified(conn: sa.Connection, keys: Sequence[tuple[str, str]]) -> list[None]:
    one, params = _facts(keys)
    if one:
        _MARK_ONE.run(conn, params)
    else:
        conn.execute(_MARK[False], params)
    return [None] * len(keys)


def _claim_notify(conn: sa.Connection, keys: Sequence[tuple[str, str]]) -> list[bool]:
    """Take the telling of these facts; a fact asked for twice is taken once."""
    one, params = _facts(keys)
    rows = _CLAIM_ONE.rows(conn, params) if one else conn.execute(_CLAIM[False], params)
    taken = {(rid, key) for rid, key in rows}
    answers = []
    for key in keys:
        answers.append(key in taken)
        taken.discard(key)
    return answers


def _states(conn: sa.Connection, request_ids: Sequence[str]) -> dict[str, RequestState]:
    ids = sorted(set(request_ids))
    rows = (
        _STATE_ONE.rows(conn, {"rid": ids[0]})
        if len(ids) == 1
        else conn.execute(_STATES[False], {"rids": ids})
    )
    return {row[0]: _request_state(row) for row in rows}


def _request_state(row: Sequence[Any]) -> RequestState:
    """A request from its row, columns in the table's order."""
    values = dict(zip(_REQUEST_COLUMNS, row, strict=True))
    return RequestState(
        request_id=UUID(values["request_id"]),
        user=values["user"],
        started_at=values["started_at"],
        files_total=values["files_total"],
        files_ready=values["files_ready"],
        files_failed=values["files_failed"],
        bytes_ready=values["bytes_ready"],
        channels=_channels(values["channels"]),
    )


_REQUEST_COLUMNS = tuple(requests_t.c.keys())


def _channels(value: str | None) -> tuple[ExternalChannel, ...] | None:
    if value is None:
        return None
    return tuple(c for c in EXTERNAL_CHANNELS if c in value.split(","))


class Store:
    """Request and fact tables over SQLAlchemy's async engine.

    ``record`` and ``mark_notified``, once per notification, of concurrent handlers run
    in batches of one transaction each (group commit): each caller is answered once its
    batch is committed.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = db.insert
        # many rows with RETURNING: SQLAlchemy's "insertmanyvalues", one statement
        self._add_facts = (
            db.insert(facts_t)
            .on_conflict_do_nothing()
            .returning(facts_t.c.request_id, facts_t.c.key)
        )
        # a request's row made if new, its per-file counters added, and returned: what
        # took an insert, an update and a select
        tally = db.insert(requests_t)
        self._tally = tally.on_conflict_do_update(
            index_elements=[requests_t.c.request_id],
            set_={
                name: requests_t.c[name] + tally.excluded[name]
                for name in ("files_ready", "files_failed", "bytes_ready")
            },
        ).returning(*requests_t.c)
        self._add_fact, self._tally_one = Prepared(self._add_facts), Prepared(self._tally)
        self._group: GroupRunner[sa.Connection] = GroupRunner(db.run, durable=db.durable)

    async def _ensure(self, conn: AsyncConnection, request_id: UUID, user: str) -> None:
        row = {"request_id": str(request_id), "user": user}
        await conn.execute(self._insert(requests_t).on_conflict_do_nothing(), [row])

    async def record(self, note: Notification, at: float) -> Recorded:
        """Record the fact ``note`` reports (at event time ``at``) once; the request after."""
        return await self._group.submit(self._record_many, (note, at))

    def _record_many(
        self,
        conn: sa.Connection,
        items: Sequence[tuple[Notification, float]],
        *,
        claim: bool = False,
    ) -> list[Recorded]:
        """Many facts in one transaction: a few statements, whatever their number.

        ``claim``: a fact seen first is taken to tell as it is recorded.
        """
        users = {str(note.request_id): note.user for note, _ in items}
        facts = {
            (str(note.request_id), fact_key(note)): (note, at)
            for note, at in reversed(items)
        }  # the first of repeats wins
        rows = [
            {"request_id": rid, "key": key, "at": at, "detail": note.reason,
             "notified": claim}
            for (rid, key), (note, at) in facts.items()
        ]  # fmt: skip
        inserted = (
            self._add_fact.rows(conn, rows[0])
            if len(rows) == 1
            else conn.execute(self._add_facts, rows)
        )
        new = {(rid, key) for rid, key in inserted}
        firsts = [facts[k] for k in new]
        sums = _sums(firsts)
        tallies = [
            {"request_id": rid, "user": user, "files_ready": ready,
             "files_failed": failed, "bytes_ready": nbytes}
            for rid, user in users.items()
            for ready, failed, nbytes in [sums.get(rid, (0, 0, 0))]
        ]  # fmt: skip
        tallied = (
            self._tally_one.rows(conn, tallies[0])
            if len(tallies) == 1
            else conn.execute(self._tally, tallies)
        )
        states = {row[0]: _request_state(row) for row in tallied}
        if any(note.kind not in PER_FILE for note, _ in firsts):  # rare: once a request
            _count_others(conn, firsts)
            states = _states(conn, list(users))
        answers = []
        for note, _ in items:
            key = (str(note.request_id), fact_key(note))
            answers.append(Recorded(key in new, states[key[0]]))
            new.discard(key)  # a repeat within the batch is not first
        return answers

    async def record_and_claim(
        self, note: Notification, at: float
    ) -> tuple[Recorded, bool]:
        """:meth:`record` then :meth:`claim_notify`, in one transaction (one commit)."""
        return await self._group.submit(self._record_and_claim_many, (note, at))

    def _record_and_claim_many(
        self, conn: sa.Connection, items: Sequence[tuple[Notification, float]]
    ) -> list[tuple[Recorded, bool]]:
        """Facts seen first are taken as they are recorded; a repeat is taken if untold."""
        recorded = self._record_many(conn, items, claim=True)
        again = [
            (str(note.request_id), fact_key(note))
            for (note, _), r in zip(items, recorded, strict=True)
            if not r.first
        ]
        taken = iter(_claim_notify(conn, again) if again else [])
        return [(r, True if r.first else next(taken)) for r in recorded]

    async def claim_notify(self, note: Notification) -> bool:
        """Take the telling of ``note``'s fact on the notebook channel (atomic): True once.

        Two copies of an event (an upstream repeat, two replicas) both record the fact and
        find it untold; only the one that takes it tells it.
        """
        key = (str(note.request_id), fact_key(note))
        return await self._group.submit(_claim_notify, key)

    async def told(self, note: Notification) -> bool:
        """Whether the telling of ``note``'s fact was confirmed (not merely taken)."""
        params = {"rid": str(note.request_id), "key": fact_key(note)}
        async with self.db.begin() as conn:
            return bool((await conn.execute(_TOLD, params)).scalar_one_or_none())

    async def unclaim_notify(self, note: Notification) -> None:
        """The telling failed: leave the fact to the next attempt."""
        c = facts_t.c
        async with self.db.begin() as conn:
            await conn.execute(
                facts_t.update()
                .where(c.request_id == str(note.request_id), c.key == fact_key(note))
                .values(notified=False)
            )

    async def mark_notified(self, note: Notification) -> None:
        """The notebook channel has told ``note``'s fact (lazy: holds only the ack up)."""
        key = (str(note.request_id), fact_key(note))
        await self._group.submit(_mark_notified, key, lazy=True)

    async def choose_channels(
        self,
        request_id: UUID,
        user: str,
        channels: tuple[ExternalChannel, ...] | None,
        at: float,
    ) -> None:
        """Remember a request's own channel choice and when it was made (its user only)."""
        values: dict[str, Any] = {"started_at": _earliest(at)}
        if channels is not None:
            values["channels"] = ",".join(channels)
        async with self.db.begin() as conn:
            await self._ensure(conn, request_id, user)
            await conn.execute(
                requests_t.update()
                .where(
                    requests_t.c.request_id == str(request_id), requests_t.c.user == user
                )
                .values(**values)
            )

    async def claim_progress(
        self, request_id: UUID, step: int, now: float, min_interval_s: float
    ) -> bool:
        """Take progress ``step`` for a request unless told already or too soon (atomic)."""
        c = requests_t.c
        async with self.db.begin() as conn:
            result = await conn.execute(
                requests_t.update()
                .where(
                    c.request_id == str(request_id),
                    c.last_step < step,
                    sa.or_(
                        c.last_progress_at.is_(None),
                        c.last_progress_at <= now - min_interval_s,
                    ),
                )
                .values(last_step=step, last_progress_at=now)
            )
        return bool(result.rowcount)

    async def state(self, request_id: UUID) -> RequestState:
        """The request as known now."""
        rid = str(request_id)
        async with self.db.connect() as conn:
            return (await conn.run_sync(_states, [rid]))[rid]

    async def files(self, request_id: UUID, kind: str, limit: int) -> list[FileTime]:
        """The latest (so slowest: all started together) files of ``kind``, slowest first."""
        prefix = f"{kind}:"
        started = (
            sa.select(requests_t.c.started_at)
            .where(requests_t.c.request_id == str(request_id))
            .scalar_subquery()
        )
        query = (
            sa.select(facts_t.c.key, facts_t.c.at - started, facts_t.c.detail)
            .where(
                facts_t.c.request_id == str(request_id),
                facts_t.c.key.startswith(prefix, autoescape=True),
            )
            .order_by(facts_t.c.at.desc())
            .limit(limit)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            FileTime(key.removeprefix(prefix), None if s is None else max(0.0, s), d)
            for key, s, d in rows
        ]
