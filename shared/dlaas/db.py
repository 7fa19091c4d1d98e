"""What the services' stores share: batches run in one transaction, SQLite on the loop.

A local SQLite file is written in batches from the event loop's own thread.

Through aiosqlite every statement is several round trips to its thread, each a GIL
hand-over that a busy loop makes slow; a batch of a few statements is microseconds of
SQLite work, cheaper run in place. It never waits for a lock on the loop: the lock is tried
without waiting, and while another connection holds it (a big ``save_request`` through the
async engine) the loop sleeps a little and the whole batch is tried again.

Its commits do not wait for the disk (WAL with ``synchronous=NORMAL``: a commit survives
the process at once, a power loss once its WAL is synced). A thread syncs the WAL, one
``fsync`` for every commit made while the previous one ran, and a handler's message is
acked only after the sync that covers its writes (:mod:`dlaas.durability`): the next
handler's look-up no longer queues behind a commit waiting for the disk, and what a
handler does after its write (a publish, telling the user) no longer waits for it either.
A power loss between the act and the sync loses the write but not the message, which comes
back: handlers are idempotent and a repeated announcement or notification is a no-op.
Its commits never checkpoint the WAL into the database (SQLite's default: the commit that
fills 1,000 pages does, a stall of several milliseconds for every batch queued behind it):
a thread of its own does, after every ``CHECKPOINT_EVERY`` commits, beside the writers
(PASSIVE).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from dlaas import durability
from dlaas.errors import TransientError, is_transaction_conflict

T = TypeVar("T")
BUSY_TIMEOUT_S = 60  # a writer waits this long for another's lock, then fails
CHECKPOINT_EVERY = 200  # commits of a LoopSqlite between two checkpoints of its WAL
# the shortest time between the starts of two syncs of a LoopSqlite's WAL: holds acks only
SYNC_EVERY_S = 0.05
# ...unless this many handlers wait for it: at a high rate a sync covers many anyway, and
# acks held back longer would fill the consumers' prefetch (a cap on throughput)
SYNC_NOW_WAITING = 10
_MEMORY = ("sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:")


def is_memory(url: str) -> bool:
    """Whether ``url`` is an in-memory SQLite database."""
    return url in _MEMORY


def is_file(url: str) -> bool:
    """Whether ``url`` is an SQLite database in a file."""
    return url.startswith("sqlite") and url not in _MEMORY


def sqlite_pragmas(connection: Any, _: object) -> None:  # noqa: ANN401  (DB-API connection)
    """WAL: readers never block the writer; FULL: a commit is on disk before any ack."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _loop_pragmas(connection: Any, _: object) -> None:  # noqa: ANN401  (DB-API connection)
    """WAL, commits that do not wait for the disk and leave the WAL to the checkpoints.

    NORMAL: LoopSqlite syncs the WAL itself, many commits at a time.
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wrote(conn: sa.Connection) -> bool:
    """Whether SQLite has a write transaction open (reads alone never open one)."""
    return bool(conn.connection.dbapi_connection.in_transaction)  # type: ignore[union-attr]


class LoopSqlite:
    """Transactions on one SQLite file, run synchronously on the event loop."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(
            url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1),
            connect_args={"timeout": 0, "check_same_thread": False},
        )
        sa.event.listen(self.engine, "connect", _loop_pragmas)
        self._wal = f"{self.engine.url.database}-wal"
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-sync")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._commits = 0  # commits that wrote
        self._synced = 0  # of those, the ones known to be on disk
        # the WAL's sync in flight (or waiting for its turn): how many commits it covers
        self._syncing: asyncio.Future[int] | None = None
        self._sync_started = 0.0  # monotonic
        self._waiting = 0  # handlers waiting for a sync (their acks held)
        self._hurry: asyncio.Future[None] | None = None  # ends a paced sync's pause
        self._dir_synced_for: int | None = None  # the WAL file whose entry is on disk
        self._checkpoint: Future[None] | None = None

    async def run(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` in one transaction, committed when it returns.

        Committed, not yet on disk: see :meth:`durable`.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                with self.engine.connect() as conn:
                    transaction = conn.begin()
                    result = work(conn)
                    wrote = _wrote(conn)
                    transaction.commit()  # WAL frames written, no fsync: microseconds
                    if wrote:
                        self._committed()
                    return result
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.005)

    async def durable(self) -> None:
        """Every commit so far on disk: before the handler's ack, or now outside a handler."""
        if self._synced >= self._commits:
            return
        sync = functools.partial(self._synced_up_to, self._commits)
        if not durability.defer(sync):
            await sync()

    async def _synced_up_to(self, commits: int) -> None:
        self._waiting += 1
        hurry = self._hurry
        if self._waiting >= SYNC_NOW_WAITING and hurry is not None and not hurry.done():
            hurry.set_result(None)
        try:
            while self._synced < commits:
                if self._syncing is None or self._syncing.done():
                    self._syncing = asyncio.ensure_future(self._sync())
                try:
                    # shielded: a waiter cancelled does not cancel the sync of the others
                    covers = await asyncio.shield(self._syncing)
                except OSError as exc:
                    raise TransientError(f"store not synced to disk: {exc!r}") from exc
                self._synced = max(self._synced, covers)
        finally:
            self._waiting -= 1

    async def _sync(self) -> int:
        """One fsync of the WAL for every commit made until it starts (group sync).

        At most one every ``SYNC_EVERY_S``: at a few events a second each commit would
        have a sync of its own, a hand-over to the thread and a flush of the disk (shared
        with the broker's) per event, where waiting a little covers several; only acks wait.
        Once ``SYNC_NOW_WAITING`` handlers wait, it starts at once.
        """
        pause = self._sync_started + SYNC_EVERY_S - time.monotonic()
        if pause > 0 and self._waiting < SYNC_NOW_WAITING:
            loop = asyncio.get_running_loop()
            self._hurry = hurry = loop.create_future()
            timer = loop.call_later(pause, _resolve, hurry)
            try:
                await hurry
            finally:
                timer.cancel()
                self._hurry = None
        self._sync_started = time.monotonic()
        covers = self._commits
        await asyncio.get_running_loop().run_in_executor(self._syncer, self._fsync_wal)
        return covers

    def _fsync_wal(self) -> None:
        """Flush the WAL file to disk, and its directory entry when the file is new."""
        fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        if inode != self._dir_synced_for:  # made (or made again) since the last sync
            fd = os.open(Path(self._wal).parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._dir_synced_for = inode

    def _committed(self) -> None:
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._checkpoint = self._checkpointer.submit(self._checkpoint_wal)

    def _checkpoint_wal(self) -> None:
        """Copy committed WAL pages into the database, writers going on meanwhile."""
        with (
            contextlib.suppress(sa.exc.OperationalError),  # busy: the next one will
            self.engine.connect() as conn,
        ):
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Release the connection."""
        self._checkpointer.shutdown()
        self.engine.dispose()
        self._syncer.shutdown()


# column types whose values SQLite's driver binds and returns as SQLAlchemy would (a
# boolean comes back as 0 or 1: read it with ``bool``)
_PLAIN_TYPES = (sa.String, sa.Integer, sa.Float, sa.Boolean)


class Prepared:
    """A hot statement for one set of parameters, run straight on SQLite's cursor.

    For a statement of a lone event SQLAlchemy's own work (checking the cache, binding and
    processing parameters, building a result and its rows) takes several times SQLite's.
    On a connection to a local SQLite file the statement is compiled once (per set of
    parameter names) and its SQL run on the driver's cursor; on any other connection
    (PostgreSQL, aiosqlite) it goes through SQLAlchemy. Rows are plain tuples either way.
    Columns and parameters of plain types only (text, numbers, booleans), checked when the
    statement is compiled.
    """

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        # per parameter names: the SQL, the order of its parameters, the fixed values
        self._compiled: dict[
            tuple[str, ...], tuple[str, tuple[str, ...], dict[str, Any]]
        ] = {}

    def rows(
        self, conn: sa.Connection, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Run it; the rows it returns."""
        raw = _local_sqlite(conn)
        if raw is None:
            return [tuple(row) for row in conn.execute(self.statement, dict(params))]
        return self._execute(raw, conn, params).fetchall()

    def run(self, conn: sa.Connection, params: Mapping[str, Any]) -> int:
        """Run it; how many rows it changed."""
        raw = _local_sqlite(conn)
        if raw is None:
            return conn.execute(self.statement, dict(params)).rowcount
        return self._execute(raw, conn, params).rowcount

    def _execute(
        self, raw: sqlite3.Connection, conn: sa.Connection, params: Mapping[str, Any]
    ) -> sqlite3.Cursor:
        sql, values = self._bound(conn, params)
        try:
            return raw.execute(sql, values)
        except sqlite3.Error as exc:  # as SQLAlchemy raises it ("locked": try again)
            raise sa.exc.DBAPIError.instance(
                sql,
                values,
                exc,
                sqlite3.Error,
                hide_parameters=True,
                dialect=conn.dialect,
            ) from exc

    def _bound(
        self, conn: sa.Connection, params: Mapping[str, Any]
    ) -> tuple[str, list[Any]]:
        names = tuple(params)
        compiled = self._compiled.get(names)
        if compiled is None:
            compiled = self._compiled[names] = self._compile(conn.dialect, params)
        sql, order, fixed = compiled
        return sql, [params[n] if n in params else fixed[n] for n in order]

    def _compile(
        self, dialect: sa.Dialect, params: Mapping[str, Any]
    ) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        statement = cast("sa.ClauseElement", self.statement)
        compiled = cast(
            "SQLCompiler", statement.compile(dialect=dialect, column_keys=list(params))
        )
        columns = getattr(self.statement, "exported_columns", ())
        types = [b.type for b in compiled.binds.values()] + [c.type for c in columns]
        odd = [t for t in types if not isinstance(t, (*_PLAIN_TYPES, sa.types.NullType))]
        if odd or compiled.positiontup is None:
            raise TypeError(f"not a plain positional statement for SQLite: {odd}")
        values = compiled.construct_params(dict(params))
        fixed = {name: value for name, value in values.items() if name not in params}
        # Python-side defaults SQLAlchemy fills in at each execution: constants only
        for column, default in [
            *((c, c.default) for c in compiled.insert_prefetch),
            *((c, c.onupdate) for c in compiled.update_prefetch),
        ]:
            if not isinstance(default, ScalarElementColumnDefault):
                raise TypeError(f"not a constant default for SQLite's cursor: {column}")
            fixed[column.key] = default.arg
        return compiled.string, tuple(compiled.positiontup), fixed


def _local_sqlite(conn: sa.Connection) -> sqlite3.Connection | None:
    """The driver's connection when ``conn`` is one to SQLite through ``sqlite3``."""
    dbapi = conn.connection.dbapi_connection
    return dbapi if isinstance(dbapi, sqlite3.Connection) else None


async def run_in_transaction(
    begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
    work: Callable[[sa.Connection], T],
) -> T:
    """Run ``work`` (plain SQLAlchemy) in one transaction of ``begin``.

    A transaction PostgreSQL aborted for a concurrent one (deadlock, serialization failure)
    is a TransientError: the batch is retried.
    """
    try:
        async with begin() as conn:
            return await conn.run_sync(work)
    except sa.exc.DBAPIError as exc:
        if is_transaction_conflict(exc):
            raise TransientError(f"database conflict: {exc.orig}") from exc
        raise


def add_missing_columns(conn: sa.Connection, tables: Iterable[sa.Table]) -> None:
    """Columns added since a store was created (nullable ones: an ALTER TABLE each)."""
    for table in tables:
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(conn.dialect)
                conn.execute(
                    sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                )
