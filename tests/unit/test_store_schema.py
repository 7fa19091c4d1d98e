"""A stager store created by an older version gets the columns added since."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from dlaas.errors import is_transaction_conflict
from dlaas_stager.store import Store
from dlaas_stager.tables import NewRequest


async def test_an_older_store_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the requests table before requests had a node
        db.execute(
            "CREATE TABLE requests (request_id VARCHAR(36) PRIMARY KEY, user VARCHAR(128) "
            "NOT NULL, account VARCHAR(64) NOT NULL, rse VARCHAR(255) NOT NULL, "
            "correlation_id VARCHAR(128), state VARCHAR(16) NOT NULL, created_at FLOAT "
            "NOT NULL, kind VARCHAR(16) DEFAULT 'stage' NOT NULL)"
        )
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.init()
    await store.init()  # twice: nothing left to add
    try:
        await store.save_request(
            NewRequest("r1", "alice", "alice", "NB", None, [], [], {}, node="n1")
        )
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT node FROM requests").fetchall() == [("n1",)]


def test_a_conflict_between_transactions_is_worth_a_retry() -> None:
    class DeadlockError(Exception):
        sqlstate = "40P01"  # what PostgreSQL says when it aborts one of two

    assert is_transaction_conflict(sa.exc.DBAPIError("UPDATE", {}, DeadlockError()))
    assert not is_transaction_conflict(sa.exc.DBAPIError("UPDATE", {}, ValueError()))
