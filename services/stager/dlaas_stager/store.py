"""Which request waits for which files: SQLite for one stager, PostgreSQL for several.

Every write is idempotent (insert-or-ignore, conditional state transitions), so a message
handled twice, or by two replicas at once, leaves the same rows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import ReturningUpdate

from dlaas.db import (
    BUSY_TIMEOUT_S,
    LoopSqlite,
    Prepared,
    add_missing_columns,
    is_file,
    run_in_transaction,
    sqlite_pragmas,
)
from dlaas.grouping import GroupRunner
from dlaas_stager.tables import (
    CANCELLED,
    FAILED,
    FINAL,
    OPEN,
    PENDING,
    PUBLISH,
    STAGE,
    STAGED,
    VISIBLE,
    NewRequest,
    Summary,
    WaitingFile,
    files_t,
    metadata,
    requests_t,
    rules_t,
)

T = TypeVar("T")

__all__ = [
    "CANCELLED",
    "FAILED",
    "PENDING",
    "PUBLISH",
    "STAGE",
    "STAGED",
    "VISIBLE",
    "NewRequest",
    "Store",
    "Summary",
    "WaitingFile",
]


@dataclass(frozen=True)
class _Move:
    """One file to move to ``state`` (see :meth:`Store.set_file_state`)."""

    request_id: str
    did: str
    state: str
    reason: str | None
    where: tuple[str, str, str] | None


INSERT_CHUNK = 5_000  # rows of a request's files built and inserted at a time
_WaitingRow = sa.Select[
    str, str, str | None, str, str, str, str | None, str | None, str, str
]


_c = files_t.c


def _fixed(values: Sequence[str]) -> list[sa.BindParameter[str]]:
    """Constants as plain parameters.

    A literal list would be an "expanding" parameter, rendered into the statement's text
    again at every execution (a fifth of a lone move's CPU).
    """
    return [sa.literal(v) for v in values]


def _keyed(*, one: bool) -> tuple[sa.ColumnElement[bool], ...]:
    """Files by their key.

    One: ``k_rid`` and ``k_did`` (a statement cached whole); many: lists of them, found
    through the DID index (a tuple IN alone scans the table in SQLite).
    """
    if one:
        return (_c.request_id == sa.bindparam("k_rid"), _c.did == sa.bindparam("k_did"))
    return (
        _c.did.in_(sa.bindparam("dids", expanding=True)),
        sa.tuple_(_c.request_id, _c.did).in_(sa.bindparam("keys", expanding=True)),
    )


def _move(*, one: bool) -> ReturningUpdate[Any]:
    return (
        files_t.update()
        .where(
            *_keyed(one=one),
            _c.state.not_in(_fixed(FINAL)),
            _c.state != sa.bindparam("to_state"),
        )
        .values(state=sa.bindparam("to_state"), reason=sa.bindparam("to_reason"))
        .returning(_c.request_id, _c.did)
    )


# a file's move, for one file (the common case of a lone event) and for many
_MOVE, _MOVE_ONE = _move(one=False), Prepared(_move(one=True))
_SET_WHERE = (
    files_t.update()
    .where(_c.request_id == sa.bindparam("b_request_id"), _c.did == sa.bindparam("b_did"))
    .values(
        path=sa.bindparam("b_path"),
        pfn=sa.bindparam("b_pfn"),
        cache_url=sa.bindparam("b_cache_url"),
    )
)
_OPEN_STATES = _fixed(OPEN)
_OPEN = (
    sa.select(_c.request_id)
    .where(
        _c.request_id.in_(sa.bindparam("ids", expanding=True)),
        _c.state.in_(_OPEN_STATES),
    )
    .group_by(_c.request_id)
)
_OPEN_ONE = Prepared(
    sa.select(_c.request_id)
    .where(_c.request_id == sa.bindparam("id"), _c.state.in_(_OPEN_STATES))
    .limit(1)
)
_SET_WHERE_ONE = Prepared(_SET_WHERE)


def _set_where(conn: sa.Connection, moves: Sequence[_Move]) -> None:
    rows = [
        {"b_request_id": m.request_id, "b_did": m.did, "b_path": m.where[0],
         "b_pfn": m.where[1], "b_cache_url": m.where[2]}
        for m in moves if m.where
    ]  # fmt: skip
    if len(rows) == 1:
        _SET_WHERE_ONE.run(conn, rows[0])
    elif rows:
        conn.execute(_SET_WHERE, rows)


class Store:
    """SQL store over SQLAlchemy's async engine (aiosqlite or asyncpg).

    The per-file operations of the hot path (look-ups by DID, state moves, completion
    checks) of concurrent handlers run in batches, one transaction each (group commit);
    each caller gets its answer once its batch is committed.
    """

    def __init__(self, url: str, *, default_instance: str = "default") -> None:
        # requests recorded before instances existed belong to the default one
        self.default_instance = default_instance
        self._instance = sa.func.coalesce(requests_t.c.instance, default_instance)
        is_sqlite = url.startswith("sqlite")
        self.engine: AsyncEngine = create_async_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_S} if is_sqlite else {}
        )
        if is_sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", sqlite_pragmas)
        self._insert = (
            postgresql.insert if url.startswith("postgresql") else sqlite.insert
        )
        self._local = LoopSqlite(url) if is_file(url) else None
        self._group: GroupRunner[sa.Connection] = GroupRunner(
            self._transaction,
            durable=self._local.durable if self._local is not None else None,
        )
        # the hot path's statements, built once: SQLAlchemy then only binds values
        self._waiting_by_did = self._waiting().where(
            _c.did.in_(sa.bindparam("dids", expanding=True)), _c.state.in_(_OPEN_STATES)
        )
        self._waiting_by_one_did = Prepared(
            self._waiting().where(
                _c.did == sa.bindparam("did"), _c.state.in_(_OPEN_STATES)
            )
        )

    async def _transaction(self, work: Callable[[sa.Connection], T]) -> T:
        """Run a batch's work in one transaction, committed when it returns."""
        if self._local is not None:
            return await self._local.run(work)
        return await run_in_transaction(self.engine.begin, work)

    async def init(self) -> None:
        """Create the tables (and indexes added since) if missing."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            for index in files_t.indexes:
                await conn.run_sync(index.create, checkfirst=True)
            await conn.run_sync(add_missing_columns, (requests_t, files_t))

    async def close(self) -> None:
        """Release connections."""
        if self._local is not None:
            self._local.close()
        await self.engine.dispose()

    async def save_request(self, req: NewRequest) -> None:
        """Record a request, its files and rules (a second call changes nothing)."""
        async with self.engine.begin() as conn:
            await self._ignore(
                conn,
                requests_t,
                [
                    {
                        "request_id": req.request_id,
                        "user": req.user,
                        "account": req.account,
                        "rse": req.rse,
                        "correlation_id": req.correlation_id,
                        "state": "accepted",
                        "created_at": time.time(),
                        "kind": req.kind,
                        "node": req.node,
                        "instance": req.instance or self.default_instance,
                    }
                ],
            )
            for start in range(0, len(req.files), INSERT_CHUNK):  # bounded memory
                await self._ignore(
                    conn,
                    files_t,
                    [
                        {
                            "request_id": req.request_id,
                            "did": f.did,
                            "rse": req.rse,
                            "bytes": f.bytes,
                            "adler32": f.adler32,
                            "state": PENDING,
                            "parent": f.parent,
                        }
                        for f in req.files[start : start + INSERT_CHUNK]
                    ],
                )
            await self._ignore(
                conn,
                rules_t,
                [
                    {"request_id": req.request_id, "rule_id": rule_id}
                    for rule_id in req.rule_ids
                ],
            )

    async def _ignore(
        self, conn: AsyncConnection, table: sa.Table, rows: list[dict[str, object]]
    ) -> None:
        if rows:
            await conn.execute(self._insert(table).on_conflict_do_nothing(), rows)

    def _waiting(self) -> _WaitingRow:
        return sa.select(
            files_t.c.request_id,
            requests_t.c.user,
            requests_t.c.correlation_id,
            files_t.c.did,
            files_t.c.rse,
            requests_t.c.kind,
            files_t.c.parent,
            requests_t.c.node,
            self._instance,
            files_t.c.state,
        ).join(requests_t, requests_t.c.request_id == files_t.c.request_id)

    async def waiting_for_file(
        self, did: str, rse: str, instance: str | None = None, *, claimed: bool = False
    ) -> list[WaitingFile]:
        """Requests of ``instance`` (the default for None) whose file ``did`` at ``rse`` waits.

        ``claimed`` also returns files claimed (staged) but not yet visible: what a
        redelivered message must announce again, its first delivery having died between
        the claim and the announcement.
        """
        key = (did, rse, instance or self.default_instance, claimed)
        return await self._group.submit(self._waiting_for_files, key, writes=False)

    def _waiting_for_files(
        self, conn: sa.Connection, keys: Sequence[tuple[str, str, str, bool]]
    ) -> list[list[WaitingFile]]:
        """Many look-ups by (did, rse, instance) in one query."""
        dids = sorted({key[0] for key in keys})
        found: dict[tuple[str, str, str | None], list[WaitingFile]] = defaultdict(list)
        rows = (
            self._waiting_by_one_did.rows(conn, {"did": dids[0]})
            if len(dids) == 1
            else conn.execute(self._waiting_by_did, {"dids": dids}).all()
        )
        for row in rows:
            file = WaitingFile(*row)
            found[file.did, file.rse, file.instance].append(file)
        return [
            [f for f in found.get((did, rse, inst), []) if claimed or f.state == PENDING]
            for did, rse, inst, claimed in keys
        ]

    async def waiting_for_rule(
        self, rule_id: str, *, claimed: bool = False
    ) -> list[WaitingFile]:
        """Files of the requests served by ``rule_id`` not yet staged (or not yet visible)."""
        query = (
            self._waiting()
            .join(rules_t, rules_t.c.request_id == files_t.c.request_id)
            .where(
                rules_t.c.rule_id == rule_id,
                files_t.c.state.in_(OPEN if claimed else (PENDING,)),
            )
        )
        return await self._fetch_waiting(query)

    async def waiting_in_request(
        self, request_id: str, *, claimed: bool = False
    ) -> list[WaitingFile]:
        """Files not yet staged of one request (``claimed``: or not yet visible)."""
        query = self._waiting().where(
            files_t.c.request_id == request_id,
            files_t.c.state.in_(OPEN if claimed else (PENDING,)),
        )
        return await self._fetch_waiting(query)

    async def _fetch_waiting(
        self,
        query: _WaitingRow,
    ) -> list[WaitingFile]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [WaitingFile(*row) for row in rows]

    async def set_file_state(
        self,
        request_id: str,
        did: str,
        state: str,
        *,
        reason: str | None = None,
        where: tuple[str, str, str] | None = None,
        lazy: bool = False,
    ) -> bool:
        """Move a file to ``state`` unless it is there or final; whether it moved (atomic).

        ``lazy``: nobody's next step waits for this move (only its message's ack): it rides
        in the commit of the next batch that writes, or waits a little for one.
        """
        move = _Move(request_id, did, state, reason, where)
        return await self._group.submit(self._move_files, move, lazy=lazy)

    def _move_files(self, conn: sa.Connection, moves: Sequence[_Move]) -> list[bool]:
        """Many moves: one UPDATE ... RETURNING per target state, in the caller's order."""
        groups: dict[tuple[str, str | None], list[_Move]] = defaultdict(list)
        for move in moves:
            groups[move.state, move.reason].append(move)
        moved: set[tuple[str, str | None, str, str]] = set()
        for (state, reason), group in groups.items():
            keys = sorted({(m.request_id, m.did) for m in group})
            to = {"to_state": state, "to_reason": reason}
            rows = (
                _MOVE_ONE.rows(conn, {"k_rid": keys[0][0], "k_did": keys[0][1], **to})
                if len(keys) == 1
                else conn.execute(
                    _MOVE, {"dids": sorted({did for _, did in keys}), "keys": keys, **to}
                ).all()
            )
            moved |= {(state, reason, rid, did) for rid, did in rows}
        _set_where(
            conn,
            [
                m
                for m in moves
                if m.where and (m.state, m.reason, m.request_id, m.did) in moved
            ],
        )
        answers = []
        for m in moves:  # a file moved once answers True once (of two racing, one claims)
            key = (m.state, m.reason, m.request_id, m.did)
            answers.append(key in moved)
            moved.discard(key)
        return answers

    async def open_requests(
        self, request_ids: Sequence[str], *, lazy: bool = False
    ) -> set[str]:
        """Which of these requests still have files to stage or show (one query).

        ``lazy``: nobody waits for the answer but a message's ack: it rides in the next
        batch, or waits a little for one.
        """
        return await self._group.submit(
            self._still_open, tuple(request_ids), lazy=lazy, writes=False
        )

    async def is_open(self, request_id: str, *, lazy: bool = False) -> bool:
        """Whether a request still has files to stage or show (batched with others)."""
        return request_id in await self.open_requests([request_id], lazy=lazy)

    def _still_open(
        self, conn: sa.Connection, asks: Sequence[tuple[str, ...]]
    ) -> list[set[str]]:
        ids = sorted({rid for ask in asks for rid in ask})
        rows = (
            _OPEN_ONE.rows(conn, {"id": ids[0]})
            if len(ids) == 1
            else conn.execute(_OPEN, {"ids": ids}).all()
        )
        open_ids = {rid for (rid,) in rows}
        return [open_ids & set(ask) for ask in asks]

    async def summary(self, request_id: str) -> Summary | None:
        """Counts per state of a request's files; None for an unknown request."""
        async with self.engine.connect() as conn:
            req = (
                await conn.execute(
                    sa.select(requests_t).where(requests_t.c.request_id == request_id)
                )
            ).first()
            if req is None:
                return None
            counts = (
                await conn.execute(
                    sa.select(
                        files_t.c.state, sa.func.count(), sa.func.sum(files_t.c.bytes)
                    )
                    .where(files_t.c.request_id == request_id)
                    .group_by(files_t.c.state)
                )
            ).all()
        by_state = {state: int(n) for state, n, _ in counts}
        ready = sum(int(b or 0) for state, _, b in counts if state == VISIBLE)
        total = sum(int(b or 0) for _, _, b in counts)
        return Summary(
            request_id, req.user, req.correlation_id, req.state, req.created_at,
            by_state, ready, req.rse, total,
        )  # fmt: skip

    async def record_reason(
        self, did: str, rse: str, reason: str, instance: str | None = None
    ) -> None:
        """Remember why a waiting file's last transfer attempt failed (told if it goes STUCK)."""
        of_instance = sa.select(requests_t.c.request_id).where(
            self._instance == (instance or self.default_instance)
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                files_t.update()
                .where(
                    files_t.c.did == did,
                    files_t.c.rse == rse,
                    files_t.c.state == PENDING,
                    files_t.c.request_id.in_(of_instance),
                )
                .values(reason=reason)
            )

    async def reasons(self, request_id: str) -> dict[str, str | None]:
        """The last recorded failure reason of each waiting file of a request."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(files_t.c.did, files_t.c.reason).where(
                        files_t.c.request_id == request_id, files_t.c.state == PENDING
                    )
                )
            ).all()
        return {str(did): reason for did, reason in rows}

    async def rules_of(self, request_id: str) -> list[str]:
        """The rules serving a request."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(rules_t.c.rule_id).where(rules_t.c.request_id == request_id)
            )
            return [rule_id for (rule_id,) in rows]

    async def rule_needed_elsewhere(self, rule_id: str, request_id: str) -> bool:
        """Whether a request other than ``request_id``, not cancelled, uses ``rule_id``."""
        query = (
            sa.select(sa.func.count())
            .select_from(
                rules_t.join(requests_t, requests_t.c.request_id == rules_t.c.request_id)
            )
            .where(
                rules_t.c.rule_id == rule_id,
                rules_t.c.request_id != request_id,
                requests_t.c.state != CANCELLED,
            )
        )
        async with self.engine.connect() as conn:
            return bool((await conn.execute(query)).scalar_one())

    async def rules_waiting_since(self, before: float) -> list[tuple[str, str]]:
        """Rules (and their instance) of requests made before ``before`` that owe files."""
        query = (
            sa.select(rules_t.c.rule_id, self._instance)
            .distinct()
            .join(requests_t, requests_t.c.request_id == rules_t.c.request_id)
            .join(files_t, files_t.c.request_id == rules_t.c.request_id)
            .where(requests_t.c.created_at < before, files_t.c.state == PENDING)
        )
        async with self.engine.connect() as conn:
            return [(rule_id, inst) for rule_id, inst in await conn.execute(query)]

    async def instance_of(self, request_id: str) -> str:
        """The Rucio instance of a request (the default for an unknown one)."""
        query = sa.select(self._instance).where(requests_t.c.request_id == request_id)
        async with self.engine.connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        return found or self.default_instance

    async def cancel(self, request_id: str) -> bool:
        """Cancel a request and its files that are not final; whether it was active."""
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                requests_t.update()
                .where(
                    requests_t.c.request_id == request_id,
                    requests_t.c.state.in_(["accepted", "completed"]),
                )
                .values(state=CANCELLED)
            )
            await conn.execute(
                files_t.update()
                .where(files_t.c.request_id == request_id, files_t.c.state.not_in(FINAL))
                .values(state=CANCELLED, reason="cancelled by the user")
            )
        return bool(changed.rowcount)

    async def file_rows(
        self, request_id: str, limit: int
    ) -> list[sa.Row[tuple[object, ...]]]:
        """A request's files with their state, where and why (the first ``limit``)."""
        query = (
            sa.select(files_t)
            .where(files_t.c.request_id == request_id)
            .order_by(files_t.c.did)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def owner(self, request_id: str) -> str | None:
        """The user who made a request."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(requests_t.c.user).where(
                        requests_t.c.request_id == request_id
                    )
                )
            ).first()
        return None if row is None else str(row.user)

    async def set_request_state(self, request_id: str, state: str) -> bool:
        """Set a request's state once; whether it changed."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                requests_t.update()
                .where(requests_t.c.request_id == request_id, requests_t.c.state != state)
                .values(state=state)
            )
        return bool(result.rowcount)
