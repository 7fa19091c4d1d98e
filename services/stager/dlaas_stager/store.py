"""Which request waits for which files: SQLite for one stager, PostgreSQL for several.

Every write is idempotent (insert-or-ignore, conditional state transitions), so a message
handled twice, or by two replicas at once, leaves the same rows.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from dlaas_stager.tables import (
    CANCELLED,
    FAILED,
    FINAL,
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


def _sqlite_pragmas(connection: Any, _: object) -> None:  # noqa: ANN401  (DB-API connection)
    """WAL: readers never block the writer; NORMAL sync is safe with WAL."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """SQL store over SQLAlchemy's async engine (aiosqlite or asyncpg)."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url)
        self._insert = (
            postgresql.insert if url.startswith("postgresql") else sqlite.insert
        )

    async def init(self) -> None:
        """Create the tables if missing."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        """Release connections."""
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
                    }
                ],
            )
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
                    for f in req.files
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

    def _waiting(self) -> sa.Select[str, str, str | None, str, str, str, str | None]:
        return sa.select(
            files_t.c.request_id,
            requests_t.c.user,
            requests_t.c.correlation_id,
            files_t.c.did,
            files_t.c.rse,
            requests_t.c.kind,
            files_t.c.parent,
        ).join(requests_t, requests_t.c.request_id == files_t.c.request_id)

    async def waiting_for_file(self, did: str, rse: str) -> list[WaitingFile]:
        """Requests whose file ``did`` at ``rse`` is not yet staged."""
        query = self._waiting().where(
            files_t.c.did == did, files_t.c.rse == rse, files_t.c.state == PENDING
        )
        return await self._fetch_waiting(query)

    async def waiting_for_rule(self, rule_id: str) -> list[WaitingFile]:
        """Files not yet staged of the requests served by ``rule_id``."""
        query = (
            self._waiting()
            .join(rules_t, rules_t.c.request_id == files_t.c.request_id)
            .where(rules_t.c.rule_id == rule_id, files_t.c.state == PENDING)
        )
        return await self._fetch_waiting(query)

    async def waiting_in_request(self, request_id: str) -> list[WaitingFile]:
        """Files not yet staged of one request."""
        query = self._waiting().where(
            files_t.c.request_id == request_id, files_t.c.state == PENDING
        )
        return await self._fetch_waiting(query)

    async def _fetch_waiting(
        self, query: sa.Select[str, str, str | None, str, str, str, str | None]
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
    ) -> bool:
        """Move a file to ``state`` unless it is there or final; whether it moved (atomic)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                files_t.update()
                .where(
                    files_t.c.request_id == request_id,
                    files_t.c.did == did,
                    files_t.c.state.not_in(FINAL),
                    files_t.c.state != state,
                )
                .values(state=state, reason=reason)
                .values(
                    **dict(zip(("path", "pfn", "cache_url"), where or (), strict=False))
                )
            )
        return bool(result.rowcount)

    async def unclaim(self, request_id: str, did: str, claimed: str) -> None:
        """Undo a claim whose announcement failed, so the next attempt announces it."""
        async with self.engine.begin() as conn:
            await conn.execute(
                files_t.update()
                .where(
                    files_t.c.request_id == request_id,
                    files_t.c.did == did,
                    files_t.c.state == claimed,
                )
                .values(state=PENDING)
            )

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

    async def record_reason(self, did: str, rse: str, reason: str) -> None:
        """Remember why a waiting file's last transfer attempt failed (told if it goes STUCK)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                files_t.update()
                .where(
                    files_t.c.did == did, files_t.c.rse == rse, files_t.c.state == PENDING
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

    async def rules_waiting_since(self, before: float) -> list[str]:
        """Rules of requests made before ``before`` that still owe files (for the watchdog)."""
        query = (
            sa.select(rules_t.c.rule_id)
            .distinct()
            .join(requests_t, requests_t.c.request_id == rules_t.c.request_id)
            .join(files_t, files_t.c.request_id == rules_t.c.request_id)
            .where(requests_t.c.created_at < before, files_t.c.state == PENDING)
        )
        async with self.engine.connect() as conn:
            return [rule_id for (rule_id,) in await conn.execute(query)]

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
