"""The four services as processes, two replicas each, sharing state in PostgreSQL.

What a fault test needs: start the replicas, kill / terminate / restart one, play a burst of
Rucio's ``transfer-done`` messages through them, and watch the user's inbox to count what
was lost and what the user was told twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aio_pika
import sqlalchemy as sa
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import RSE, USER, did_of, spawn_python, wait_logged
from bench.inject import inject
from bench.variants import SERVICES, record_request
from dlaas.bus import batch, topology
from dlaas.settings import BusSettings
from dlaas_devstack import _proc
from dlaas_notifier.tables import Database
from dlaas_stager.ports import FileInfo
from dlaas_stager.store import Store
from dlaas_stager.tables import files_t

CHUNK = 100  # files per stage request


def psql(sql: str) -> None:
    """Run one statement on the machine's PostgreSQL as its administrator."""
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql],
                   check=True, capture_output=True, timeout=60)  # fmt: skip


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A database of its own (``dlaas_<prefix>_<hex>``), dropped afterwards; its URL."""
    name = f"dlaas_{prefix}_{uuid.uuid4().hex[:8]}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Replicas:
    """``replicas`` processes of each service (``bench.svc``: the stager with a free fake
    Rucio), configured only through ``DLAAS_*`` variables."""

    url: str
    workdir: Path
    stager_db: str
    notifier_db: str
    replicas: int = 2
    grace_s: float = 10.0
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    children: dict[str, _proc.Child] = field(default_factory=dict)

    @property
    def mount(self) -> Path:
        """What the NOTEBOOK mount shows (files are placed here, no XRootD needed)."""
        return self.workdir / "mnt"

    def env(self) -> dict[str, str]:
        """The environment of every replica."""
        mounts = [{"rse": RSE, "mount_path": str(self.mount), "path_begins_at": 2}]
        return {
            "DLAAS_BUS__URL": self.url,
            "DLAAS_BUS__RETRY_DELAYS_S": "[0.5, 1, 2]",
            "DLAAS_LOG_JSON": "true",
            "DLAAS_LOG_LEVEL": os.environ.get("DLAAS_FAULT_LOG_LEVEL", "INFO"),
            "DLAAS_GRACE_S": str(self.grace_s),
            "DLAAS_STAGER__DB_URL": self.stager_db,
            "DLAAS_CACHE__ENDPOINTS": "[]",
            "DLAAS_FUSE__MOUNTS": json.dumps(mounts),
            "DLAAS_FUSE__VIEWS_ROOT": str(self.workdir / "views"),
            "DLAAS_NOTIFIER__DB_URL": self.notifier_db,
            **self.extra_env,
        }

    def names(self, service: str) -> list[str]:
        """The replica names of one service."""
        return [f"{service}-{i}" for i in range(self.replicas)]

    async def prepare(self) -> None:
        """Declare the topology and alice's inbox, create the tables once (not raced)."""
        settings = BusSettings.model_validate({"url": self.url})
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            await topology.declare_all(channel, settings)
            await topology.declare_inbox(channel, USER, settings)
        store = Store(self.stager_db)
        await store.init()
        await store.close()
        db = Database(self.notifier_db)
        await db.create_tables()
        await db.close()

    def start(self) -> None:
        """Start every replica and wait until each consumes."""
        for service in self.services:
            for name in self.names(service):
                self.children[name] = self._spawn(name)
        for child in self.children.values():
            wait_logged(child, "service_started", timeout=60)

    def _spawn(self, name: str) -> _proc.Child:
        service = name.rsplit("-", 1)[0]
        return spawn_python(name, "bench.svc", [service], self.workdir, self.env())

    def kill(self, name: str) -> None:
        """SIGKILL one replica, as a crash does (its unacked messages go back)."""
        child = self.children[name]
        child.signal_group(signal.SIGKILL)
        child.popen.wait(10)

    def terminate(self, name: str, timeout: float) -> tuple[int | None, float]:
        """SIGTERM one replica; its exit code (None: still running) and how long it took."""
        child = self.children[name]
        started = time.monotonic()
        child.signal_group(signal.SIGTERM)
        try:
            code: int | None = child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def restart(self, name: str) -> float:
        """Start a stopped replica again; seconds until it consumes."""
        started = time.monotonic()
        old = self.children[name].log_path
        old.rename(old.with_suffix(f".{time.time_ns()}.log"))
        self.children[name] = child = self._spawn(name)
        wait_logged(child, "service_started", timeout=60)
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM, bounded wait, SIGKILL: only these replicas."""
        _proc.stop_all(self.children.values(), grace=15)

    def log_text(self, name: str) -> str:
        """Everything one replica logged, over its restarts."""
        logs = sorted(self.workdir.joinpath("logs").glob(f"{name}.*log"))
        return "".join(p.read_text(errors="replace") for p in logs)


@dataclass
class Burst:
    """``n`` files of alice's, in requests of CHUNK files, recorded as the stager does."""

    n: int
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    requests: list[str] = field(default_factory=list)

    @property
    def dids(self) -> list[str]:
        """The files of the burst."""
        return [did_of(i, self.run) for i in range(self.n)]

    async def record(self, replicas: Replicas) -> None:
        """Place the files on the mount and record the requests in the stager's store."""
        for did in self.dids:
            scope, _, name = did.partition(":")
            folder = replicas.mount / scope
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x" * 1024)
        store = Store(replicas.stager_db)
        dids = self.dids
        for start in range(0, self.n, CHUNK):
            files = [
                FileInfo(did, 1024, "0cc737eb") for did in dids[start : start + CHUNK]
            ]
            request_id = str(uuid.uuid4())
            self.requests.append(request_id)
            await store.save_request(record_request(request_id, files))
        await store.close()

    async def inject(self, url: str) -> None:
        """Publish one hermes ``transfer-done`` per file, as fast as confirmed."""
        await inject(url, "rucio.hermes", self.run, self.n, 0)


@dataclass
class Told:
    """What alice's inbox received of one burst."""

    ready: Counter[str] = field(default_factory=Counter)  # did -> times told ready
    completed: Counter[str] = field(default_factory=Counter)  # request -> times
    arrivals: list[float] = field(default_factory=list)  # monotonic, first of each file
    sources: dict[str, list[str]] = field(default_factory=dict)  # did -> source events

    def repeated_sources(self) -> tuple[int, int]:
        """Duplicates telling one event again, and telling two events of one fact."""
        same = other = 0
        for told in self.sources.values():
            if len(told) > 1:
                same += len(told) - len(set(told))
                other += len(set(told)) - 1
        return same, other

    def missing(self, burst: Burst) -> list[str]:
        """Files never told ready."""
        return [did for did in burst.dids if did not in self.ready]

    def lost(self, burst: Burst) -> int:
        """How many files were never told ready."""
        return len(self.missing(burst))

    def user_visible_duplicates(self) -> int:
        """Facts told by two different events (a client would show both)."""
        return self.repeated_sources()[1]

    def duplicates(self) -> int:
        """Facts told more than once (a file ready, a request completed)."""
        return sum(c - 1 for c in self.ready.values()) + sum(
            c - 1 for c in self.completed.values()
        )

    def longest_gap(self, since: float) -> float:
        """The longest wait between files reaching the user, from ``since`` on."""
        times = [since, *sorted(t for t in self.arrivals if t > since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class Inbox:
    """Reads alice's inbox while a burst runs (acks everything, counts this burst's).

    A message the broker delivers again (same message id: our ack was lost with the
    connection) is not a second telling; the notifier telling again is (a new message).
    The connection is robust: it comes back after a broker restart.
    """

    def __init__(self, url: str, burst: Burst) -> None:
        self.url = url
        self.burst = burst
        self.told = Told()
        self._wanted = set(burst.dids)
        self._seen: set[str] = set()
        self._changed = asyncio.Event()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect_robust(self.url, reconnect_interval=1)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.get_queue(topology.inbox(USER).name)
        await queue.consume(self._on_message)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        for _, body in batch.unbatch(message):  # notes told together share a message
            self._on_note(json.loads(body))
        self._changed.set()
        await message.ack()

    def _on_note(self, note: dict[str, Any]) -> None:
        # a repeat of one message (the same event id, a redelivery) is folded
        if note.get("event_id") in self._seen:
            return
        self._seen.add(str(note.get("event_id")))
        if note.get("kind") == "file-ready" and note.get("did") in self._wanted:
            if note["did"] not in self.told.ready:
                self.told.arrivals.append(time.monotonic())
            self.told.ready[note["did"]] += 1
            source = str(note.get("source_event_id"))
            self.told.sources.setdefault(note["did"], []).append(source)
        elif note.get("kind") == "completed" and note.get("request_id") in set(
            self.burst.requests
        ):
            self.told.completed[note["request_id"]] += 1

    def ready_count(self) -> int:
        """Files told ready so far."""
        return len(self.told.ready)

    async def wait_for(self, files: int, timeout: float) -> None:
        """Until ``files`` files were told ready (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while self.ready_count() < files and time.monotonic() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break

    async def settle(
        self, timeout: float, quiet_s: float = 3.0, stall_s: float = 15.0
    ) -> None:
        """Until every file and completion was told and nothing came for ``quiet_s``; or
        nothing came for ``stall_s`` (what is missing then is lost: counted, not awaited)."""
        deadline = time.monotonic() + timeout
        every = len(self.burst.requests)
        last = time.monotonic()
        while time.monotonic() < deadline:
            done = (
                self.ready_count() >= self.burst.n and len(self.told.completed) >= every
            )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), quiet_s)
                last = time.monotonic()
            except TimeoutError:
                if done or time.monotonic() - last > stall_s:
                    return


async def stager_states(db_url: str, dids: list[str]) -> Counter[str]:
    """How many of ``dids`` the stager's store has in each state (to explain a loss)."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(files_t.c.state).where(files_t.c.did.in_(dids))
            )
            return Counter(state for (state,) in rows)
    finally:
        await engine.dispose()


async def judge(
    replicas: Replicas,
    burst: Burst,
    told: Told,
    deadlocks_before: int = 0,
    *,
    notifier_cut: bool = False,
) -> None:
    """Nothing lost; nothing told twice, but for at-least-once's own window.

    ``notifier_cut``: the fault killed a notifier, or cut it off, right after it told facts
    and before it recorded them told (its ack and its mark lost with it): those events come
    again and their facts are told again, the same event each time. Clients fold a fact
    they already have (``dlaas``, the Python API, the JupyterLab extension show it once),
    so the user sees none of it; two *different* events telling one fact would be a defect.
    """
    missing = told.missing(burst)
    states = await stager_states(replicas.stager_db, missing) if missing else {}
    locked = deadlocks(replicas) - deadlocks_before
    assert not missing, (
        f"{len(missing)} lost; their states at the stager: {states}; "
        f"notifier deadlocks: {locked}"
    )
    _, other = told.repeated_sources()
    assert other == 0, f"{other} facts told from two events: {told.ready.most_common(3)}"
    if not notifier_cut:
        assert told.duplicates() == 0, told.ready.most_common(3)
    assert len(told.completed) == len(burst.requests)


def deadlocks(replicas: Replicas) -> int:
    """PostgreSQL deadlocks the notifier replicas logged so far."""
    return sum(
        replicas.log_text(name).count("deadlock detected")
        for name in replicas.names("notifier")
    )
