"""The fuse agent with real xrootdfs mounts of a real origin: mounts, self-healing, views."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import aio_pika
import pytest

from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.http import Check
from dlaas.contracts import FileFailed, FileReady, FileVisible
from dlaas.settings import BusSettings
from dlaas_devstack import xrootd
from dlaas_devstack.broker import Vhost, create_vhost
from dlaas_fuse_agent.adapters.xrootdfs import is_mounted
from dlaas_fuse_agent.app import build
from dlaas_fuse_agent.settings import FuseAgentSettings, FuseOptions
from tests.broker import need
from tests.faults.report import FaultFigure
from tests.services import one_service

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

NOTEBOOK = "/data/notebook"
SIZE = 1_000_000
WATCH = {
    "interval_s": 0.2,
    "timeout_s": 2,
    "failures_to_remount": 1,
    "backoff_s": 0.2,
    "max_backoff_s": 1,
}


@pytest.fixture(scope="module")
def vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost of this module's own: its visible and failed events reach no other test."""
    own = create_vhost(broker.admin, f"{broker.name}-fuse")
    yield Vhost(broker.admin, own.name, broker.host, broker.port)
    own.delete()


@pytest.fixture
def fuse_ready() -> None:
    for tool in ("xrootd", "xrootdfs"):
        if shutil.which(tool) is None:
            need(f"{tool} not installed")
    usable, reason = xrootd.fuse_available()
    if not usable:
        need(reason)


@pytest.fixture
def payload() -> bytes:
    return random.Random(5).randbytes(SIZE)


@pytest.fixture
def origin(tmp_path: Path, payload: bytes) -> Iterator[xrootd.XRootDServer]:
    folder = tmp_path / "storage" / NOTEBOOK.lstrip("/")
    (folder / "user.alice").mkdir(parents=True)
    (folder / "user.alice" / "f0.bin").write_bytes(payload)
    server = xrootd.start_origin(tmp_path / "run", tmp_path / "storage")
    yield server
    xrootd.stop_server(server)


def _adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def _options(tmp_path: Path, source: str | None, **watch: float) -> FuseOptions:
    mount = {
        "rse": "NOTEBOOK",
        "mount_path": str(tmp_path / "mnt"),
        "path_begins_at": 2,
        "source": source,
    }
    return FuseOptions.model_validate(
        {
            "mounts": [mount],
            "views_root": str(tmp_path / "views"),
            "check_timeout_s": 2,
            "watch": WATCH | watch,
        }
    )


@contextlib.asynccontextmanager
async def running_agent(
    url: str, options: FuseOptions, checks: dict[str, Check] | None = None
) -> AsyncIterator[Bus]:
    """The fuse agent in this process (mounted on entry, unmounted on exit); a client bus.

    ``checks`` gets the agent's readiness checks (what its ``/readyz`` answers from).
    """
    bus_settings = BusSettings.model_validate({"url": url, "retry_delays_s": (0.3, 0.6)})
    settings = FuseAgentSettings(bus=bus_settings, fuse=options)

    async def built(service: Bus) -> Sequence[Consumer]:
        consumers = await build(service, settings)
        if checks is not None:
            checks.update(service.checks)
        return consumers

    async with one_service(bus_settings, "fuse_agent", built) as bus:
        yield bus


@contextlib.asynccontextmanager
async def outcomes(url: str) -> AsyncIterator[asyncio.Queue[FileVisible | FileFailed]]:
    """The fuse agent's answers: file-visible and file-failed events."""
    got: asyncio.Queue[FileVisible | FileFailed] = asyncio.Queue()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topology.EVENTS, FileVisible.routing_key())
        await queue.bind(topology.EVENTS, f"*.{FileFailed.event_type}")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            for kind, body in batch.unbatch(message):
                model = FileVisible if kind == FileVisible.event_type else FileFailed
                await got.put(model.model_validate_json(body))
            await message.ack()

        await queue.consume(keep)
        yield got


def _ready(origin: str, name: str = "f0.bin", did: str | None = None) -> FileReady:
    pfn = f"{origin}/{NOTEBOOK}/user.alice/{name}"
    return FileReady(
        request_id=uuid.uuid4(),
        user="alice",
        did=did or f"user.alice:{name}",
        rse="NOTEBOOK",
        pfn=pfn,
        bytes=SIZE,
        cache_url=pfn,
    )


async def _answer(
    bus: Bus, got: asyncio.Queue[FileVisible | FileFailed], event: FileReady
) -> FileVisible | FileFailed:
    await bus.publish(event)
    async with asyncio.timeout(15):
        while (answer := await got.get()).request_id != event.request_id:
            pass
    return answer


async def _until(check: Check, *, want: bool, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while await check() is not want:
            await asyncio.sleep(0.1)


def _readable(path: Path, payload: bytes) -> bool:
    try:
        return path.read_bytes() == payload
    except OSError:
        return False


async def _heals(path: Path, payload: bytes, timeout: float = 20) -> float:
    """Seconds until ``path`` reads ``payload`` again, nobody but the agent acting."""
    started = time.monotonic()
    while not await asyncio.to_thread(_readable, path, payload):
        assert time.monotonic() - started < timeout, f"{path} not readable again"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _xrootdfs_pid(mountpoint: Path) -> int | None:
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name == "xrootdfs" and argv[1] == bytes(mountpoint):
                return int(proc.name)
    return None


@pytest.mark.xrootd
@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_ready")
async def test_mounts_at_start_shows_ready_files_and_unmounts_at_stop(
    vhost, tmp_path, origin, payload
):
    options = _options(tmp_path, f"{origin.url}/{NOTEBOOK}")
    mnt = tmp_path / "mnt"
    async with running_agent(vhost.url(), options) as bus, outcomes(vhost.url()) as got:
        assert is_mounted(mnt)
        visible = await _answer(bus, got, _ready(origin.url))
        assert isinstance(visible, FileVisible), visible
        view = Path(visible.path)
        assert view == tmp_path / "views" / "alice" / "user.alice" / "f0.bin"
        assert view.is_symlink()
        assert Path(visible.mount_path) == mnt / "user.alice" / "f0.bin"
        assert _adler32(view.read_bytes()) == _adler32(payload)
    assert not is_mounted(mnt)


@pytest.mark.xrootd
@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_ready")
@pytest.mark.faults
async def test_the_mount_heals_after_the_origin_restarts(
    vhost, tmp_path, origin, payload, fault_report
):
    options = _options(tmp_path, f"{origin.url}/{NOTEBOOK}")
    view_target = tmp_path / "mnt" / "user.alice" / "f0.bin"
    server = origin
    checks: dict[str, Check] = {}
    async with (
        running_agent(vhost.url(), options, checks) as bus,
        outcomes(vhost.url()) as got,
    ):
        assert await checks["mounts"]()  # /readyz: ready while the mount works
        os.kill(origin.pid, signal.SIGKILL)
        await asyncio.sleep(0.3)
        assert not await asyncio.to_thread(_readable, view_target, payload)
        await _until(checks["mounts"], want=False)  # not ready while it is broken
        failed = await _answer(bus, got, _ready(origin.url))  # retried, then given up
        assert isinstance(failed, FileFailed)
        assert failed.stage == "mount"

        server = await asyncio.to_thread(xrootd.restart_server, origin, tmp_path / "run")
        healed = await _heals(view_target, payload)
        print(f"healthy {healed:.2f} s after the restart")
        await _until(checks["mounts"], want=True)
        visible = await _answer(bus, got, _ready(origin.url))
        assert isinstance(visible, FileVisible), visible
        assert Path(visible.path).read_bytes() == payload
    xrootd.stop_server(server)
    fault_report(
        FaultFigure(
            fault="XRootD origin killed under a FUSE mount (stale mount)",
            sent=2, lost=0, duplicates=0, recovery_s=healed,
            note="the file asked for while it was down: told failed (mount); the "
            "mount healed by itself after the restart, the next file shown",
        )
    )  # fmt: skip


@pytest.mark.xrootd
@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_ready")
@pytest.mark.faults
async def test_a_killed_xrootdfs_is_remounted(
    vhost, tmp_path, origin, payload, fault_report
):
    options = _options(tmp_path, f"{origin.url}/{NOTEBOOK}")
    mnt = tmp_path / "mnt"
    async with running_agent(vhost.url(), options):
        first = _xrootdfs_pid(mnt)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        healed = await _heals(mnt / "user.alice" / "f0.bin", payload)
        print(f"remounted in {healed:.2f} s")
        fault_report(
            FaultFigure(
                fault="xrootdfs killed (Transport endpoint is not connected)",
                sent=0, lost=0, duplicates=0, recovery_s=healed,
                note="remounted by the agent, nobody else acting",
            )
        )  # fmt: skip
        second = _xrootdfs_pid(mnt)
        assert second not in (None, first)
    assert _xrootdfs_pid(mnt) is None


async def test_tricks_are_refused_and_nothing_lands_outside_the_view(vhost, tmp_path):
    """Plain-directory mode (no xrootdfs): what the spine uses; no FUSE needed."""
    options = _options(tmp_path, None)
    target = tmp_path / "mnt" / "user.alice"
    target.mkdir(parents=True)
    (target / "f0.bin").write_bytes(b"data")
    outside = tmp_path / "outside"
    outside.mkdir()
    origin = "root://127.0.0.1:1094"
    async with running_agent(vhost.url(), options) as bus, outcomes(vhost.url()) as got:
        escape = _ready(origin).model_copy(
            update={"pfn": f"{origin}//data/notebook/../../../etc/passwd"}
        )
        answer = await _answer(bus, got, escape)
        assert isinstance(answer, FileFailed)
        assert "would leave" in answer.reason

        elsewhere = _ready(origin).model_copy(update={"rse": "ELSEWHERE"})
        answer = await _answer(bus, got, elsewhere)
        assert isinstance(answer, FileFailed)
        assert "no mount of RSE ELSEWHERE" in answer.reason

        (tmp_path / "views" / "alice").mkdir(parents=True)
        (tmp_path / "views" / "alice" / "user.alice").symlink_to(outside)
        answer = await _answer(bus, got, _ready(origin))
        assert isinstance(answer, FileFailed)
        assert "not a plain directory" in answer.reason

        async with await aio_pika.connect(vhost.url()) as connection:
            channel = await connection.channel()
            body = (
                _ready(origin).model_dump_json().replace("user.alice:f0.bin", "s:../../x")
            )
            await channel.default_exchange.publish(
                aio_pika.Message(body.encode(), type=FileReady.event_type),
                routing_key="fuse_agent.files",
            )
        await asyncio.sleep(1)
    assert list(outside.iterdir()) == []
    dead = vhost.get_messages("fuse_agent.files.dlq")
    reasons = [str(m["properties"]["headers"]["x-dlaas-reason"]) for m in dead]
    assert any("malformed" in r and "escape" in r for r in reasons), reasons
