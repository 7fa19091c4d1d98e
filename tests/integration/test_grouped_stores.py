"""The stager's and notifier's stores under concurrent handlers: grouped transactions, the
same answers as one by one.

On SQLite (a file) and on PostgreSQL (a database of its own, dropped after).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dlaas import db, durability
from dlaas.contracts import Notification
from dlaas.db import SYNC_NOW_WAITING, LoopSqlite
from dlaas.errors import TransientError
from dlaas.grouping import GroupRunner
from dlaas_notifier.store import Store as NotifierStore
from dlaas_notifier.tables import Database
from dlaas_stager.ports import FileInfo
from dlaas_stager.store import PENDING, STAGED, VISIBLE, NewRequest, Store


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql],
                   check=True, capture_output=True, timeout=60)  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'stager.db'}"
        return
    name = f"dlaas_store_{uuid.uuid4().hex[:8]}"
    try:
        _psql(f'CREATE DATABASE "{name}"')
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """The store with two requests of 20 files, sharing file f0 (at NOTEBOOK)."""
    store = Store(db_url)
    await store.init()
    for rid, dids in (("r1", range(20)), ("r2", range(19, 39))):
        files = [FileInfo(f"user.alice:f{i}", 10, None) for i in dids]
        await store.save_request(
            NewRequest(rid, "alice", "alice", "NOTEBOOK", None, files, ["rule"], {})
        )
    yield store
    await store.close()


async def test_concurrent_lookups_get_their_own_answers(store: Store) -> None:
    dids = [f"user.alice:f{i}" for i in range(40)]
    answers = await asyncio.gather(
        *(store.waiting_for_file(did, "NOTEBOOK") for did in dids),
        store.waiting_for_file("user.alice:f3", "ELSEWHERE"),
    )
    assert [sorted(w.request_id for w in a) for a in answers[:40]] == (
        [["r1"]] * 19 + [["r1", "r2"]] + [["r2"]] * 19 + [[]]
    )
    assert answers[40] == []  # same DID, other RSE
    assert all(w.did == did for a, did in zip(answers, dids, strict=False) for w in a)


async def test_of_racing_claims_exactly_one_wins(store: Store) -> None:
    claims = await asyncio.gather(
        *(store.set_file_state("r1", "user.alice:f1", STAGED) for _ in range(5)),
        store.set_file_state("r1", "user.alice:f2", STAGED),
    )
    assert claims == [True, False, False, False, False, True]
    assert not await store.set_file_state("r1", "user.alice:f1", STAGED)
    assert await store.waiting_for_file("user.alice:f1", "NOTEBOOK") == []


async def test_visible_files_keep_where_and_close_the_request(store: Store) -> None:
    where = ("/views/alice/f", "root://o//f", "root://c//f")
    assert await store.is_open("r1")
    moves = await asyncio.gather(
        *(
            store.set_file_state("r1", f"user.alice:f{i}", VISIBLE, where=where)
            for i in range(20)
        )
    )
    assert all(moves)
    assert not await store.is_open("r1")
    assert await store.open_requests(["r1", "r2", "unknown"]) == {"r2"}
    summary = await store.summary("r1")
    assert summary is not None
    assert summary.done
    assert summary.by_state == {VISIBLE: 20}
    assert summary.bytes_ready == 200
    rows = await store.file_rows("r1", 1)
    assert (rows[0].path, rows[0].pfn, rows[0].cache_url) == where
    # the same file in r2 still waits
    waiting = await store.waiting_for_file("user.alice:f19", "NOTEBOOK")
    assert [(w.request_id, PENDING) for w in waiting] == [("r2", PENDING)]


async def _in_place(work: Callable[[None], list[Any]]) -> list[Any]:
    """A "transaction" that runs the batch's work at once (no database)."""
    return work(None)


_Note = Callable[[None, Sequence[str]], list[str]]


def _noting(*, linger_s: float) -> tuple[GroupRunner[None], _Note, list[list[str]]]:
    """A runner, an operation that upper-cases its items, and the batches it saw."""
    batches: list[list[str]] = []

    def note(_: None, items: Sequence[str]) -> list[str]:
        batches.append(list(items))
        return [item.upper() for item in items]

    return GroupRunner(_in_place, linger_s=linger_s), note, batches


async def test_a_failing_batch_fails_every_caller_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    def double(_: None, items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky")
        return [2 * i for i in items]

    runner: GroupRunner[None] = GroupRunner(_in_place)
    results = await asyncio.gather(
        *(runner.submit(double, i) for i in range(3)), return_exceptions=True
    )
    assert results == [0, 2, 4]
    assert calls == [[0, 1, 2]]  # one batch for the three concurrent callers
    failed = await asyncio.gather(
        runner.submit(double, 13), runner.submit(double, 1), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in failed)
    assert await runner.submit(double, 4) == 8


async def test_a_lazy_operation_rides_with_the_next_batch_or_goes_after_its_linger() -> (
    None
):
    runner, note, batches = _noting(linger_s=0.2)
    lazy = asyncio.ensure_future(runner.submit(note, "told", lazy=True))
    await asyncio.sleep(0.05)
    assert batches == []  # waits for company
    assert await runner.submit(note, "claim") == "CLAIM"
    assert batches == [["told", "claim"]]  # one transaction for both
    assert await lazy == "TOLD"
    started = asyncio.get_running_loop().time()
    assert await runner.submit(note, "alone", lazy=True) == "ALONE"
    assert asyncio.get_running_loop().time() - started >= 0.2  # none came: its linger
    assert batches[-1] == ["alone"]


async def test_a_lazy_write_waits_out_a_batch_of_reads_a_lazy_read_does_not() -> None:
    runner, note, batches = _noting(linger_s=0.5)
    lazy = asyncio.ensure_future(runner.submit(note, "visible", lazy=True))
    await asyncio.sleep(0.01)
    # a look-up needs no commit: it does not take the lazy write along
    assert await runner.submit(note, "look-up", writes=False) == "LOOK-UP"
    assert batches == [["look-up"]]
    assert not lazy.done()
    assert await runner.submit(note, "claim") == "CLAIM"  # commits anyway: one for both
    assert batches[-1] == ["visible", "claim"]
    assert await lazy == "VISIBLE"
    # a lazy read rides with whatever runs next, a batch of reads included
    check = asyncio.ensure_future(runner.submit(note, "is-open", lazy=True, writes=False))
    await asyncio.sleep(0.01)
    assert await runner.submit(note, "look-up 2", writes=False) == "LOOK-UP 2"
    assert batches[-1] == ["is-open", "look-up 2"]
    assert await check == "IS-OPEN"


async def test_look_ups_racing_moves_see_each_file_before_or_after(store: Store) -> None:
    """Look-ups submitted with moves of the same files: each sees a committed state."""
    dids = [f"user.alice:f{i}" for i in range(1, 19)]
    moves = [store.set_file_state("r1", did, STAGED) for did in dids]
    looks = [store.waiting_for_file(did, "NOTEBOOK", claimed=True) for did in dids]
    moved, seen = await asyncio.gather(asyncio.gather(*moves), asyncio.gather(*looks))
    assert all(moved)  # every move took
    for did, waiting in zip(dids, seen, strict=True):
        assert [(w.request_id, w.did) for w in waiting] == [("r1", did)], waiting
        assert waiting[0].state in (PENDING, STAGED)
    after = await asyncio.gather(*(store.waiting_for_file(d, "NOTEBOOK") for d in dids))
    assert after == [[]] * len(dids)  # staged: no longer waiting


async def test_a_commit_acts_at_once_and_reaches_the_disk_before_the_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoopSqlite commits without waiting for the disk; one fsync covers many commits."""
    local = LoopSqlite(f"sqlite+aiosqlite:///{tmp_path / 'local.db'}")
    fsyncs: list[int] = []
    real = local._fsync_wal

    def counted() -> None:
        fsyncs.append(1)
        real()

    monkeypatch.setattr(local, "_fsync_wal", counted)
    runner: GroupRunner[sa.Connection] = GroupRunner(local.run, durable=local.durable)

    def add(conn: sa.Connection, items: Sequence[int]) -> list[int]:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
        for n in items:
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", (n,))
        return list(items)

    def count(conn: sa.Connection, items: Sequence[None]) -> list[int]:
        return [conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()] * len(items)

    try:
        assert await runner.submit(add, 0) == 0  # no handler collects: on disk at once
        assert fsyncs == [1]
        with durability.deferred() as syncs:  # what a consumer does around a handler
            for n in range(1, 11):  # ten commits, one after the other
                assert await runner.submit(add, n) == n
            assert fsyncs == [1]  # acted on without waiting for the disk...
            assert await runner.submit(count, None, writes=False) == 11  # ...committed
        await durability.settle(syncs)  # before the ack
        assert fsyncs == [1, 1]  # one fsync for the ten
        await durability.settle(syncs)  # on disk already: nothing to do
        assert fsyncs == [1, 1]

        async def handler(n: int) -> None:  # many at once, syncs racing with commits
            with durability.deferred() as syncs:
                await runner.submit(add, n)
            await asyncio.wait_for(durability.settle(syncs), 10)

        await asyncio.gather(*(handler(n) for n in range(100, 200)))
        assert 3 <= len(fsyncs) <= 2 + 100
        assert await runner.submit(count, None, writes=False) == 111

        def failing() -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(local, "_fsync_wal", failing)
        with pytest.raises(
            TransientError, match="not synced to disk"
        ):  # retried, unacked
            await runner.submit(add, 300)
        monkeypatch.setattr(local, "_fsync_wal", counted)
        synced = len(fsyncs)
        await local.durable()  # the next sync covers the write the failed one did not
        assert len(fsyncs) == synced + 1
    finally:
        local.close()


class _TimedWal:
    """A LoopSqlite whose syncs are timed, and a handler's commit-then-ack on it."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch, pause: float) -> None:
        monkeypatch.setattr(db, "SYNC_EVERY_S", pause)
        self.local = LoopSqlite(f"sqlite+aiosqlite:///{path}")
        self.started: list[float] = []  # when each sync of the WAL began
        real = self.local._fsync_wal

        def timed() -> None:
            self.started.append(time.monotonic())
            real()

        monkeypatch.setattr(self.local, "_fsync_wal", timed)

    async def event(self) -> None:
        """A handler: commits, acts, then waits for the disk."""
        with durability.deferred() as syncs:
            await self.local.run(_add_row)
            await self.local.durable()
        await durability.settle(syncs)


def _add_row(conn: sa.Connection) -> None:
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    conn.exec_driver_sql("INSERT INTO t VALUES (1)")


async def test_syncs_of_the_wal_are_paced_so_that_one_covers_commits_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits a few milliseconds apart (a quiet stream of events) share a sync."""
    # longer than SYNC_EVERY_S: the first sync's thread may start late on a busy machine,
    # which makes the two starts seem closer than the pause; a margin absorbs it
    pause = 0.2
    wal = _TimedWal(tmp_path / "paced.db", monkeypatch, pause)
    try:
        await wal.event()  # the first sync starts at once
        waiting = []
        for _ in range(5):  # 5 events 5 ms apart, each waiting for its own ack
            waiting.append(asyncio.ensure_future(wal.event()))
            await asyncio.sleep(0.005)
        await asyncio.gather(*waiting)
        assert len(wal.started) == 2  # one sync for the five, not five
        assert wal.started[1] - wal.started[0] >= pause * 0.75
    finally:
        wal.local.close()


async def test_a_paced_sync_starts_at_once_when_many_acks_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a high rate the pause would only hold acks back (and fill the prefetch)."""
    pause = 1.0  # long, so that "at once" and "paced" differ by far more than any hiccup
    wal = _TimedWal(tmp_path / "hurried.db", monkeypatch, pause)
    try:
        await wal.event()
        await asyncio.gather(*(wal.event() for _ in range(SYNC_NOW_WAITING)))
        assert len(wal.started) == 2  # one sync for all of them...
        assert wal.started[1] - wal.started[0] < pause / 2  # ...without the pause
        await asyncio.gather(*(wal.event() for _ in range(SYNC_NOW_WAITING - 1)))
        assert wal.started[2] - wal.started[1] >= pause * 0.9  # fewer: paced
    finally:
        wal.local.close()


async def test_a_handler_whose_writes_cannot_reach_the_disk_is_not_acked() -> None:
    async def broken() -> None:
        raise TransientError("store not synced to disk: EIO")

    with durability.deferred() as syncs:
        assert durability.defer(broken)
        later = asyncio.get_running_loop().create_future()

        async def after_the_handler() -> bool:  # a task it started, writing later
            await later
            return durability.defer(broken)

        task = asyncio.ensure_future(after_the_handler())
    with pytest.raises(TransientError):  # the consumer retries the message, unacked
        await durability.settle(syncs)
    assert not durability.defer(broken)  # no handler collects here: the caller waits
    later.set_result(None)
    assert not await task  # the handler is over: its task waits for itself
    assert len(syncs) == 1


def _note(
    rid: uuid.UUID, kind: str, did: str | None = None, **fields: object
) -> Notification:
    return Notification.model_validate({
        "request_id": rid, "user": "alice", "kind": kind, "did": did, "text": kind,
        "source_event_id": str(uuid.uuid4()), **fields,
    })  # fmt: skip


async def test_notifier_facts_count_once_and_are_told_once(db_url: str) -> None:
    db = Database(db_url)
    await db.create_tables()
    store = NotifierStore(db)
    rid, other = uuid.uuid4(), uuid.uuid4()
    try:
        accepted = _note(rid, "accepted", files_total=4)
        ready = [_note(rid, "file-ready", f"s:f{i}", bytes=10) for i in range(3)]
        failed = _note(rid, "file-failed", "s:f3", reason="lost")
        recorded = await asyncio.gather(
            store.record(accepted, 1.0),
            *(store.record(n, 2.0) for n in ready),
            store.record(ready[0], 3.0),  # a repeat in the same batch
            store.record(failed, 2.5),
            store.record(_note(other, "file-ready", "s:f0", bytes=1), 2.0),
        )
        assert [r.first for r in recorded] == [True, True, True, True, False, True, True]
        state = recorded[0].state
        assert (state.files_total, state.files_ready, state.files_failed) == (4, 3, 1)
        assert (state.bytes_ready, state.started_at) == (30, 1.0)
        assert recorded[-1].state.files_ready == 1
        await asyncio.gather(*(store.mark_notified(n) for n in ready[:2]))
        again = await asyncio.gather(*(store.record(n, 4.0) for n in ready))
        assert [r.first for r in again] == [False, False, False]
        # told ones are not taken again; the untold one is, once
        taken = await asyncio.gather(*(store.claim_notify(n) for n in [*ready, ready[2]]))
        assert taken == [False, False, True, False]
        assert again[0].state.files_ready == 3
    finally:
        await db.close()
