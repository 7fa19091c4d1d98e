"""The notifier's tables: requests seen, facts told (dedupe), the per-channel outbox.

SQLite (aiosqlite) for one replica; PostgreSQL (asyncpg) for several, which compete for
outbox rows through leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from dlaas.errors import TransientError, is_transaction_conflict

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


def _add_missing_columns(conn: sa.Connection) -> None:
    for table in metadata.sorted_tables:
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(conn.dialect)
                conn.execute(
                    sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
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
_MEMORY = ("sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:")
T = TypeVar("T")
BUSY_TIMEOUT_S = 60  # a writer waits this long for another's lock, then fails


def _sqlite_pragmas(connection: Any, _: object) -> None:  # noqa: ANN401  (DB-API connection)
    """WAL: readers never block the writer; FULL: a commit is on disk before an ack."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _wrote(conn: sa.Connection) -> bool:
    """Whether SQLite has a write transaction open (reads alone never open one)."""
    return bool(conn.connection.dbapi_connection.in_transaction)  # type: ignore[union-attr]


class LoopSqlite:
    """A local SQLite file written in batches from the event loop's own thread.

    Through aiosqlite every statement is several round trips to its thread, each a GIL
    hand-over; a batch of a few statements is microseconds of SQLite, cheaper run in
    place. It never waits for a lock on the loop: the lock is tried without waiting, and
    while another connection holds it the loop sleeps and the batch is tried again.
    """

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(
            url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1),
            connect_args={"timeout": 0, "check_same_thread": False},
        )
        sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")

    async def run(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` in one transaction, committed (on disk) when it returns."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        loop = asyncio.get_running_loop()
        while True:
            try:
                with self.engine.connect() as conn:
                    transaction = conn.begin()
                    result = work(conn)
                    if _wrote(
                        conn
                    ):  # the commit waits for the disk (fsync): off the loop
                        await loop.run_in_executor(self._committer, transaction.commit)
                    else:
                        transaction.commit()  # nothing written: nothing to wait for
                    return result
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.005)

    def close(self) -> None:
        """Release the connection."""
        self.engine.dispose()
        self._committer.shutdown()


class Database:
    """An engine and its dialect's INSERT; in memory, one shared connection used in turn."""

    def __init__(self, url: str) -> None:
        self.memory = url in _MEMORY
        self.engine: AsyncEngine = (
            create_async_engine(url, poolclass=StaticPool)
            if self.memory
            else create_async_engine(
                url,
                **(
                    {"connect_args": {"timeout": BUSY_TIMEOUT_S}} if _is_file(url) else {}
                ),
            )
        )
        self._local = LoopSqlite(url) if _is_file(url) and not self.memory else None
        if _is_file(url) and not self.memory:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
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
        try:
            async with self.begin() as conn:
                return await conn.run_sync(work)
        except sa.exc.DBAPIError as exc:
            if is_transaction_conflict(exc):  # aborted for another: the batch is retried
                raise TransientError(f"database conflict: {exc.orig}") from exc
            raise

    async def create_tables(self) -> None:
        """Create the tables if missing, and the nullable columns added since."""
        async with self.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_add_missing_columns)

    async def close(self) -> None:
        """Release connections."""
        if self._local is not None:
            self._local.close()
        await self.engine.dispose()


def _is_file(url: str) -> bool:
    return url.startswith("sqlite") and url not in _MEMORY
