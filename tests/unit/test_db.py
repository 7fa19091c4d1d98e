"""A local SQLite file written from the loop: its WAL is checkpointed off the commits."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from dlaas import db
from dlaas.db import LoopSqlite


async def test_commits_leave_the_wal_to_a_checkpoint_thread_every_so_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "CHECKPOINT_EVERY", 5)
    path = tmp_path / "s.db"
    local = LoopSqlite(f"sqlite+aiosqlite:///{path}")

    def insert(n: int) -> Callable[[sa.Connection], None]:
        def work(conn: sa.Connection) -> None:
            conn.execute(sa.text("INSERT INTO t VALUES (:n)"), {"n": n})

        return work

    def autocheckpoint(conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

    try:
        await local.run(lambda conn: conn.exec_driver_sql("CREATE TABLE t (n INTEGER)"))
        assert await local.run(autocheckpoint) == 0  # no commit pays for a checkpoint
        for n in range(5):  # the fifth commit hands one to the thread
            await local.run(insert(n))
        checkpoint = local._checkpoint
        assert checkpoint is not None
        checkpoint.result(timeout=10)
        # what the checkpoint copied is in the database file itself, without the WAL
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        with sqlite3.connect(copy) as plain:
            assert plain.execute("SELECT count(*) FROM t").fetchone() == (5,)
    finally:
        local.close()
