"""The cache router against a real origin and real XCaches: routing, dead caches, warming."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.contracts import CacheMiss, FileReady, FileStaged
from dlaas.settings import BusSettings
from dlaas_cache_router.app import build
from dlaas_cache_router.domain import choose_cache
from dlaas_cache_router.settings import CacheOptions, CacheRouterSettings
from dlaas_devstack import xrootd
from dlaas_devstack.broker import Vhost, create_vhost
from tests.broker import need
from tests.faults.report import FaultFigure
from tests.services import one_service

# Read by the XRootD client once, when first imported: a dead server must fail fast.
for _key, _value in {
    "XRD_CONNECTIONWINDOW": "2",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "10",
}.items():
    os.environ.setdefault(_key, _value)

pytestmark = [pytest.mark.xrootd, pytest.mark.broker, pytest.mark.timeout(60)]

DATASET = "/data/notebook/ds"
SIZE = 1_500_000  # two 1 MiB cache blocks


@dataclass(frozen=True)
class LakeFile:
    did: str
    path: str
    adler32: str


@pytest.fixture(scope="module")
def vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost of this module's own: its file-ready events must not reach other tests."""
    own = create_vhost(broker.admin, f"{broker.name}-router")
    yield Vhost(broker.admin, own.name, broker.host, broker.port)
    own.delete()


@pytest.fixture(autouse=True)
def _xrootd_installed() -> None:
    for tool in ("xrootd", "xrdfs"):
        if shutil.which(tool) is None:
            need(f"{tool} not installed")


@pytest.fixture
def files(tmp_path: Path) -> list[LakeFile]:
    rng = random.Random(11)
    made = []
    for i in range(8):
        data = rng.randbytes(SIZE)
        path = f"{DATASET}/f{i}.bin"
        target = tmp_path / "storage" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        made.append(LakeFile(f"user.alice:ds.f{i}", path, _adler32(data)))
    return made


@pytest.fixture
def origin(tmp_path: Path, files: list[LakeFile]) -> Iterator[xrootd.XRootDServer]:
    server = xrootd.start_origin(tmp_path / "run", tmp_path / "storage")
    yield server
    xrootd.stop_server(server)


def _adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def _read(url: str) -> bytes:
    from XRootD import client  # noqa: PLC0415 - after the XRD_* settings above

    with client.File() as remote:
        status, _ = remote.open(url, timeout=10)
        if not status.ok:
            raise OSError(status.message)
        status, data = remote.read(timeout=10)
        if not status.ok:
            raise OSError(status.message)
    assert isinstance(data, bytes)
    return data


async def _read_checked(url: str, file: LakeFile) -> None:
    data = await asyncio.to_thread(_read, url)
    assert _adler32(data) == file.adler32, f"{url}: checksum differs from Rucio's"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running_router(url: str, options: Mapping[str, object]) -> AsyncIterator[Bus]:
    """The cache router consuming in this process; yields a bus to publish with."""
    bus_settings = BusSettings.model_validate({"url": url, "retry_delays_s": (0.2, 0.5)})
    settings = CacheRouterSettings(
        bus=bus_settings, cache=CacheOptions.model_validate(options)
    )
    async with one_service(
        bus_settings, "cache_router", lambda b: build(b, settings)
    ) as bus:
        yield bus


@contextlib.asynccontextmanager
async def spy(url: str, *keys: str) -> AsyncIterator[asyncio.Queue[bytes]]:
    """Every event published under ``keys`` while inside."""
    received: asyncio.Queue[bytes] = asyncio.Queue()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        for key in keys:
            await queue.bind(topology.EVENTS, key)

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            for _, body in batch.unbatch(message):
                await received.put(body)
            await message.ack()

        await queue.consume(keep)
        yield received


async def _ready(
    bus: Bus,
    got: asyncio.Queue[bytes],
    origin: xrootd.XRootDServer,
    files: list[LakeFile],
) -> dict[str, FileReady]:
    """Stage ``files`` as one request; the FileReady of each, by DID."""
    request = uuid.uuid4()
    for file in files:
        staged = FileStaged(
            request_id=request,
            user="alice",
            did=file.did,
            rse="NOTEBOOK",
            pfn=f"{origin.url}/{file.path}",
            bytes=SIZE,
            adler32=file.adler32,
        )
        await bus.publish(staged)
    ready: dict[str, FileReady] = {}
    async with asyncio.timeout(10):
        while len(ready) < len(files):
            event = FileReady.model_validate_json(await got.get())
            if event.request_id == request:
                ready[event.did] = event
    return ready


def _two_each(files: list[LakeFile], caches: list[str]) -> list[LakeFile]:
    """Four files named so that each cache wins two (the cache ports are random)."""
    names = (f"user.alice:ds.n{k}" for k in range(10_000))
    wanted = [caches[0], caches[0], caches[1], caches[1]]
    chosen = []
    for file, cache in zip(files, wanted, strict=False):
        did = next(n for n in names if choose_cache(n, caches) == cache)
        chosen.append(LakeFile(did, file.path, file.adler32))
    return chosen


@pytest.mark.faults
async def test_files_go_to_live_caches_and_are_read_with_their_checksum(
    vhost, tmp_path, origin, files, fault_report
):
    run = tmp_path / "run"
    a = xrootd.start_xcache(run, origin=None, name="cache-a")
    b = xrootd.start_xcache(run, origin=None, name="cache-b")
    options = {
        "endpoints": [a.url, b.url],
        "probe": {"interval_s": 0.2, "timeout_s": 1, "failures_to_dead": 1},
        "warm": {"enabled": False},
    }
    chosen = _two_each(files, [a.url, b.url])
    try:
        async with (
            running_router(vhost.url(), options) as bus,
            spy(vhost.url(), FileReady.routing_key()) as got,
        ):
            ready = await _ready(bus, got, origin, chosen)
            home = {did: event.cache for did, event in ready.items()}
            for file in chosen:
                event = ready[file.did]
                assert event.cache == choose_cache(file.did, [a.url, b.url])
                assert event.cache_url == f"{event.cache}//{origin.url}/{file.path}"
                await _read_checked(event.cache_url, file)

            killed = time.monotonic()
            os.kill(a.pid, signal.SIGKILL)
            await asyncio.sleep(1)
            ready = await _ready(bus, got, origin, chosen)
            assert {e.cache for e in ready.values()} == {b.url}
            fault_report(
                FaultFigure(
                    fault="an XCache killed (SIGKILL), then the other, then one back",
                    sent=len(chosen), lost=len(chosen) - len(ready), duplicates=0,
                    recovery_s=time.monotonic() - killed,
                    note="files routed to the live cache, then to the origin; each read "
                    "with Rucio's adler32 (recovery includes a 1 s wait for the probe)",
                )
            )  # fmt: skip
            moved = [f for f in chosen if home[f.did] == a.url]
            await _read_checked(ready[moved[0].did].cache_url, moved[0])

            xrootd.stop_server(b)
            await asyncio.sleep(1)
            ready = await _ready(bus, got, origin, chosen)
            assert all(e.cache is None and e.cache_url == e.pfn for e in ready.values())
            await _read_checked(ready[moved[0].did].cache_url, moved[0])

            a = await asyncio.to_thread(xrootd.restart_server, a, run)
            await asyncio.sleep(1)
            ready = await _ready(bus, got, origin, chosen)
            assert {e.cache for e in ready.values()} == {a.url}
    finally:
        xrootd.stop_server(a)
        xrootd.stop_server(b)


def _origin_opens(run: Path, origin: xrootd.XRootDServer, file: LakeFile) -> int:
    lines = xrootd.log_path(run, origin).read_text(errors="replace").splitlines()
    return sum(
        "ofs_open: " in line and line.endswith(f"fn={file.path}") for line in lines
    )


# XCache reports a file when it releases it. A client that closes while the cache still has
# the file's blocks to write has its release put off by 30 s (XrdPfc's IO::Detach, doubling up
# to 120 s), and the warm reads the first miss starts can be put off again: on a loaded
# machine the three misses take up to ~60 s (a fresh-clone CI run gave up after 15).
MISS_REPORT_WAIT_S = 100


async def _misses(got: asyncio.Queue[bytes], paths: set[str]) -> dict[str, CacheMiss]:
    seen: dict[str, CacheMiss] = {}
    async with asyncio.timeout(MISS_REPORT_WAIT_S):
        while not paths <= set(seen):
            miss = CacheMiss.model_validate_json(await got.get())
            seen[miss.lfn] = miss
    return seen


@pytest.mark.timeout(MISS_REPORT_WAIT_S + 60)
async def test_a_miss_warms_the_rest_of_the_dataset_within_its_budget(
    vhost, tmp_path, origin, files
):
    run, port = tmp_path / "run", _free_udp_port()
    cache = xrootd.start_xcache(run, origin=None, monitor_udp_port=port)
    dataset = files[:4]
    options = {
        "endpoints": [cache.url],
        "warm": {"max_files": 2, "window_s": 60},
        "monitor": {"udp_port": port},
    }
    try:
        async with (
            running_router(vhost.url(), options) as bus,
            spy(vhost.url(), FileReady.routing_key()) as got_ready,
            spy(vhost.url(), f"*.{CacheMiss.event_type}") as got_miss,
        ):
            ready = await _ready(bus, got_ready, origin, dataset)
            first, warmed, left = dataset[0], dataset[1:3], dataset[3]
            await _read_checked(ready[first.did].cache_url, first)

            # the cache reports its miss; the router warms the next two (the budget)
            seen = await _misses(got_miss, {f.path for f in dataset[:3]})
            assert seen[first.path].cache.endswith(f":{cache.port}")
            await asyncio.sleep(0.5)
            assert [_origin_opens(run, origin, f) for f in dataset] == [1, 1, 1, 0]

            # the second file is a hit: read with the origin gone, not fetched again
            xrootd.stop_server(origin)
            for file in warmed:
                await _read_checked(ready[file.did].cache_url, file)
            with pytest.raises(OSError, match="rror"):
                await asyncio.to_thread(_read, ready[left.did].cache_url)
    finally:
        xrootd.stop_server(cache)
