"""The notifier's tables: requests seen, facts told (dedupe), the per-channel outbox.

SQLite (aiosqlite) for one replica; PostgreSQL (asyncpg) for several, which compete for
outbox rows through leases.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from dlaas.db import (
    BUSY_TIMEOUT_S,
    LoopSqlite,
    add_missing_columns,
    is_file,
    is_memory,
    run_in_transaction,
    sqlite_pragmas,
)

metadata = sa.MetaData()
requests_t = sa.Table(
    "notifier_requests",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("files_total", sa.Integer),
    sa.Column("files_ready", sa.Integer, nullable=False, default=0),
    sa.Column("files_failed", sa.Integer, nullable=False, default=0),
    sa.Column("bytes_ready", sa.BigInteger, nullable=False, default=0),
    sa.Column("channels", sa.String(64)),  # comma-separated; NULL: the user's defaults
    sa.Column("last_step", sa.Integer, nullable=False, default=0),
    sa.Column("last_progress_at", sa.Float),
)


facts_t = sa.Table(
    "notifier_facts",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(320), primary_key=True),  # kind or kind:did
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("notified", sa.Boolean, nullable=False, default=False),  # taken to tell
    sa.Column("told", sa.Boolean),  # the broker confirmed the telling (NULL: not known)
)
outbox_t = sa.Table(
    "notifier_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("request_id", sa.String(36), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("sent_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("channel", "request_id", "key"),
    sa.Index("ix_outbox_due", "channel", "state", "next_at"),
    sa.Index("ix_outbox_sent", "channel", "user", "sent_at"),
)

InsertFn = Callable[[sa.Table], Any]
T = TypeVar("T")


class Database:
    """An engine and its dialect's INSERT; in memory, one shared connection used in turn."""

    def __init__(self, url: str) -> None:
        self.memory = is_memory(url)
        self.engine: AsyncEngine = (
            create_async_engine(url, poolclass=StaticPool)
            if self.memory
            else create_async_engine(
                url,
                **({"connect_args": {"timeout": BUSY_TIMEOUT_S}} if is_file(url) else {}),
            )
        )
        self._local = LoopSqlite(url) if is_file(url) and not self.memory else None
        if is_file(url) and not self.memory:
            sa.event.listen(self.engine.sync_engine, "connect", sqlite_pragmas)
        self.insert: InsertFn = (
            postgresql.insert if url.startswith("postgresql") else sqlite.insert
        )
        # an in-memory database lives in one connection: transactions must not interleave
        self._turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        if not self.memory:
            yield
            return
        async with self._turn:
            yield

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on success."""
        async with self._guard(), self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading."""
        async with self._guard(), self.engine.connect() as conn:
            yield conn

    async def run(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` (plain SQLAlchemy) in one transaction, committed when it returns."""
        if self._local is not None:
            return await self._local.run(work)
        return await run_in_transaction(self.begin, work)

    @property
    def durable(self) -> Callable[[], Awaitable[None]] | None:
        """What makes the batches' commits durable later (a local SQLite file), else None."""
        return self._local.durable if self._local is not None else None

    async def create_tables(self) -> None:
        """Create the tables if missing, and the nullable columns added since."""
        async with self.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(add_missing_columns, metadata.sorted_tables)

    async def close(self) -> None:
        """Release connections."""
        if self._local is not None:
            self._local.close()
        await self.engine.dispose()
