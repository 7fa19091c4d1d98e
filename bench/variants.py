"""The two pipelines under test: dlaas's four services and the bare aio-pika baseline."""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aio_pika

from bench import hop
from bench.common import RSE, USER, did_of, spawn_python
from dlaas.bus import topology
from dlaas.settings import BusSettings
from dlaas_devstack import _proc
from dlaas_devstack.broker import Vhost
from dlaas_stager.ports import FileInfo
from dlaas_stager.store import NewRequest, Store

SERVICES = ("stager", "cache_router", "fuse_agent", "notifier")


class Variant(Protocol):
    """A pipeline: prepares its state and queues, starts its processes, names its sink."""

    @property
    def name(self) -> str:
        """How the tables call it."""
        ...

    async def prepare(self, vhost: Vhost, workdir: Path, run: str, n: int) -> str:
        """Declare queues and state for ``n`` files; the queue the user's client reads."""
        ...

    def spawn(self, vhost: Vhost, workdir: Path) -> list[_proc.Child]:
        """Start one process per service or hop."""
        ...

    def did_in(self, body: bytes) -> str | None:
        """The file a message at the sink reports ready (None: not a per-file message)."""
        ...


@dataclass(frozen=True)
class Baseline:
    """Four bare aio-pika hops: parse, forward persistent, await the confirm, ack."""

    name: str = "baseline"

    async def prepare(self, vhost: Vhost, workdir: Path, run: str, n: int) -> str:  # noqa: ARG002
        async with await aio_pika.connect(vhost.url()) as connection:
            await hop.declare(await connection.channel())
        return hop.queue_name(hop.HOPS + 1)

    def spawn(self, vhost: Vhost, workdir: Path) -> list[_proc.Child]:
        return [
            spawn_python(f"hop{i}", "bench.hop", [vhost.url(), str(i)], workdir, {})
            for i in range(1, hop.HOPS + 1)
        ]

    def did_in(self, body: bytes) -> str | None:
        did: str = json.loads(body)["did"]
        return did


@dataclass(frozen=True)
class Dlaas:
    """stager -> cache_router -> fuse_agent -> notifier, each its own process."""

    chunk: int = 100  # files per stage request (the stager sums a request on every file)
    db_url: str | None = None
    name: str = "dlaas"
    pythonpath: str | None = (
        None  # another ``dlaas`` package to run (before/after a change)
    )
    env: tuple[tuple[str, str], ...] = ()  # more DLAAS_* settings of every service

    async def prepare(self, vhost: Vhost, workdir: Path, run: str, n: int) -> str:
        dids = [did_of(i, run) for i in range(n)]
        _place_files(workdir / "mnt", dids)
        await self._record_requests(workdir, dids)
        settings = BusSettings.model_validate({"url": vhost.url()})
        async with await aio_pika.connect(vhost.url()) as connection:
            channel = await connection.channel()
            await topology.declare_all(channel, settings)
            await topology.declare_inbox(channel, USER, settings)
        return topology.inbox(USER).name

    async def _record_requests(self, workdir: Path, dids: list[str]) -> None:
        store = Store(self._db(workdir))
        await store.init()
        for start in range(0, len(dids), self.chunk):
            files = [
                FileInfo(did, 1024, "0cc737eb")
                for did in dids[start : start + self.chunk]
            ]
            request_id = str(uuid.uuid4())
            await store.save_request(record_request(request_id, files))
        await store.close()

    def _db(self, workdir: Path) -> str:
        return self.db_url or f"sqlite+aiosqlite:///{workdir / 'stager.db'}"

    def spawn(self, vhost: Vhost, workdir: Path) -> list[_proc.Child]:
        mounts = [{"rse": RSE, "mount_path": str(workdir / "mnt"), "path_begins_at": 2}]
        env = {
            "DLAAS_BUS__URL": vhost.url(),
            "DLAAS_LOG_JSON": "true",
            "DLAAS_STAGER__DB_URL": self._db(workdir),
            "DLAAS_CACHE__ENDPOINTS": "[]",  # no XCache to probe here: read the origin
            "DLAAS_FUSE__MOUNTS": json.dumps(mounts),
            "DLAAS_FUSE__VIEWS_ROOT": str(workdir / "views"),
            "DLAAS_NOTIFIER__DB_URL": f"sqlite+aiosqlite:///{workdir / 'notifier.db'}",
        }
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        env.update(self.env)
        return [spawn_python(s, "bench.svc", [s], workdir, env) for s in SERVICES]

    def did_in(self, body: bytes) -> str | None:
        note = json.loads(body)
        return note["did"] if note.get("kind") == "file-ready" else None


def record_request(request_id: str, files: list[FileInfo]) -> NewRequest:
    """A request of alice's for ``files`` at NOTEBOOK, as the stager records it."""
    fields: dict[str, object] = {
        "request_id": request_id,
        "user": USER,
        "account": USER,
        "rse": RSE,
        "correlation_id": None,
        "files": files,
        "rule_ids": [uuid.uuid4().hex],  # Rucio rule ids are 32 hex digits
    }
    known = {f.name for f in dataclasses.fields(NewRequest)}
    if "refused" in known:  # newer stores record DIDs Rucio refused
        fields["refused"] = {}
    return NewRequest(**fields)  # type: ignore[arg-type]


def _place_files(mount: Path, dids: list[str]) -> None:
    """Put each file where the NOTEBOOK mount shows it: <mount>/<scope>/<name>."""
    for did in dids:
        scope, _, name = did.partition(":")
        folder = mount / scope
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * 1024)
