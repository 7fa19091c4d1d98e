"""A hot statement run straight on SQLite's cursor answers as SQLAlchemy does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from dlaas.db import LoopSqlite, Prepared

metadata = sa.MetaData()
items_t = sa.Table(
    "items",
    metadata,
    sa.Column("key", sa.String(36), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("count", sa.Integer, nullable=False, default=0),
    sa.Column("size", sa.Float),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
)
stamps_t = sa.Table("stamps", metadata, sa.Column("at", sa.DateTime))
_c = items_t.c


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite+pysqlite:///{tmp_path / 'items.db'}")
    metadata.create_all(engine)
    return engine


def _both(
    engine: sa.Engine, statement: sa.Executable, params: dict[str, object]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The rows of ``statement`` through the cursor and through SQLAlchemy, each rolled back."""
    with engine.connect() as conn:
        raw = Prepared(statement).rows(conn, params)
        conn.rollback()
        through = [tuple(row) for row in conn.execute(statement, params)]
        conn.rollback()
    return raw, through


def test_insert_with_defaults_then_returning_update_and_limited_select(
    engine: sa.Engine,
) -> None:
    upsert = sqlite.insert(items_t)
    add = upsert.on_conflict_do_update(
        index_elements=[_c.key], set_={"count": _c.count + upsert.excluded.count}
    ).returning(*items_t.c)
    with engine.begin() as conn:
        first = Prepared(add)
        assert first.rows(conn, {"key": "a", "state": "new", "count": 2}) == [
            ("a", "new", 2, None, 0)  # defaults filled, a boolean read as 0
        ]
        assert first.rows(conn, {"key": "a", "state": "new", "count": 3}) == [
            ("a", "new", 5, None, 0)
        ]
        move = Prepared(
            items_t.update()
            .where(_c.key == sa.bindparam("k"), _c.state.not_in([sa.literal("gone")]))
            .values(state=sa.bindparam("to"), done=True)
            .returning(_c.key, _c.state)
        )
        assert move.rows(conn, {"k": "a", "to": "seen"}) == [("a", "seen")]
        assert move.run(conn, {"k": "nobody", "to": "seen"}) == 0
    limited = (
        sa.select(_c.key, _c.count)
        .where(_c.state.in_([sa.literal("seen"), sa.literal("new")]), _c.done.is_(True))
        .limit(1)
    )
    raw, through = _both(engine, limited, {})
    assert raw == through == [("a", 5)]


def test_same_rows_as_sqlalchemy_for_each_set_of_parameter_names(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            items_t.insert(),
            [{"key": f"k{i}", "state": "new", "size": i / 2} for i in range(5)],
        )
    query = sa.select(_c.key, _c.size).where(
        _c.key == sa.bindparam("key"), _c.size >= sa.bindparam("least", 0.0)
    )
    prepared = Prepared(query)
    with engine.connect() as conn:
        assert prepared.rows(conn, {"key": "k3"}) == [("k3", 1.5)]
        assert prepared.rows(conn, {"key": "k3", "least": 2.0}) == []
        assert prepared.rows(conn, {"least": 0.5, "key": "k1"}) == [("k1", 0.5)]


def test_other_drivers_go_through_sqlalchemy_and_odd_types_are_refused(
    engine: sa.Engine,
) -> None:
    with engine.connect() as conn, pytest.raises(TypeError, match="plain"):
        Prepared(stamps_t.select().where(stamps_t.c.at > sa.bindparam("t"))).rows(
            conn, {"t": None}
        )
    memory = sa.create_engine("sqlite+pysqlite://", module=_WrappedSqlite())
    metadata.create_all(memory)
    with memory.begin() as conn:
        add = Prepared(items_t.insert().returning(_c.key, _c.count))
        assert add.rows(conn, {"key": "x", "state": "new"}) == [("x", 0)]


class _WrappedSqlite:
    """The ``sqlite3`` module behind a connection that is not a ``sqlite3.Connection``."""

    def __getattr__(self, name: str) -> object:
        import sqlite3  # noqa: PLC0415

        return getattr(sqlite3, name)

    def connect(self, *args: object, **kwargs: object) -> object:
        import sqlite3  # noqa: PLC0415

        return _Proxy(sqlite3.connect(*args, **kwargs))  # type: ignore[call-overload]


class _Proxy:
    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_locked_database_raises_as_through_sqlalchemy(tmp_path: Path) -> None:
    """The stores retry SQLAlchemy's OperationalError ("locked"), not the driver's own."""
    url = f"sqlite+pysqlite:///{tmp_path / 'locked.db'}"
    engine = sa.create_engine(url, connect_args={"timeout": 0})
    metadata.create_all(engine)
    holder = sa.create_engine(url).connect()
    holder.execute(items_t.insert(), {"key": "held", "state": "new"})  # write lock held
    try:
        with (
            engine.begin() as conn,
            pytest.raises(sa.exc.OperationalError, match="locked"),
        ):
            Prepared(items_t.update().values(state=sa.bindparam("s"))).run(
                conn, {"s": "x"}
            )
    finally:
        holder.rollback()
        holder.close()


async def test_loop_sqlite_waits_out_a_lock_held_elsewhere(tmp_path: Path) -> None:
    """A batch meeting another connection's write lock is tried again once it is free."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    local = LoopSqlite(url)
    metadata.create_all(local.engine)
    holder = sa.create_engine(url.replace("+aiosqlite", "+pysqlite")).connect()
    holder.execute(items_t.insert(), {"key": "held", "state": "new"})  # write lock held
    add = Prepared(items_t.insert().returning(_c.key))
    release = asyncio.get_running_loop().call_later(0.05, holder.commit)
    try:
        added = await local.run(lambda conn: add.rows(conn, {"key": "k", "state": "new"}))
    finally:
        release.cancel()
        holder.close()
        local.close()
    assert added == [("k",)]
