"""Real XRootD origin, forwarding XCache and xrootdfs mounts from dlaas_devstack.xrootd."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import time
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from dlaas_devstack import xrootd

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

# The XRootD client reads these once, when XRootD is first imported (lazily, below):
# without them a dead server hangs a read for a minute or more.
for _key, _value in {
    "XRD_CONNECTIONWINDOW": "2",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "10",
}.items():
    os.environ.setdefault(_key, _value)

pytestmark = [pytest.mark.xrootd, pytest.mark.timeout(60)]

NOTEBOOK = "/data/notebook"
LFN = f"{NOTEBOOK}/events.bin"
SIZE = 2_500_000  # three 1 MiB cache blocks


def _require(available: bool, reason: str) -> None:
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _xrootd_installed() -> None:
    _require(shutil.which("xrootd") is not None, "xrootd server not installed")
    _require(shutil.which("xrdfs") is not None, "xrdfs client not installed")
    try:
        import XRootD.client  # noqa: F401, PLC0415 - after the XRD_* settings above
    except ImportError:
        _require(False, "XRootD python bindings (pip xrootd) not installed")


@pytest.fixture
def payload() -> bytes:
    return random.Random(7).randbytes(SIZE)


@pytest.fixture
def data_dir(tmp_path: Path, payload: bytes) -> Path:
    root = tmp_path / "storage"
    (root / NOTEBOOK.lstrip("/")).mkdir(parents=True)
    (root / LFN.lstrip("/")).write_bytes(payload)
    (root / NOTEBOOK.lstrip("/") / "untouched.txt").write_bytes(b"never read before\n")
    return root


@pytest.fixture
def origin(tmp_path: Path, data_dir: Path) -> Iterator[xrootd.XRootDServer]:
    server = xrootd.start_origin(tmp_path / "run", data_dir)
    yield server
    xrootd.stop_server(server)


def _read(url: str) -> bytes:
    from XRootD import client  # noqa: PLC0415 - see the XRD_* settings above

    with client.File() as remote:
        status, _ = remote.open(url, timeout=10)
        assert status.ok, status.message
        status, data = remote.read(timeout=10)
        assert status.ok, status.message
    assert isinstance(data, bytes)
    return data


def _open_status(url: str) -> Any:
    from XRootD import client  # noqa: PLC0415

    with client.File() as remote:
        status, _ = remote.open(url, timeout=10)
    return status


def _server_checksum(server: xrootd.XRootDServer, path: str) -> str:
    from XRootD import client  # noqa: PLC0415
    from XRootD.client.flags import QueryCode  # noqa: PLC0415

    status, answer = client.FileSystem(server.url).query(
        QueryCode.CHECKSUM, path, timeout=5
    )
    assert status.ok, status.message
    algorithm, value = answer.rstrip(b"\0").decode().split()
    assert algorithm == "adler32"
    return str(value)


def _eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def test_origin_serves_files_from_data_dir(origin, payload):
    data = _read(f"{origin.url}/{LFN}")

    assert data == payload
    assert _adler32(data) == _adler32(payload) == _server_checksum(origin, LFN)


@pytest.fixture
async def monitor() -> AsyncIterator[xrootd.PfcMonitorListener]:
    listener = xrootd.PfcMonitorListener()
    await listener.start()
    yield listener
    await listener.stop()


@pytest.fixture
async def forwarding_cache(tmp_path, monitor) -> AsyncIterator[xrootd.XRootDServer]:
    cache = await asyncio.to_thread(
        xrootd.start_xcache, tmp_path / "run", origin=None, monitor_udp_port=monitor.port
    )
    yield cache
    await asyncio.to_thread(xrootd.stop_server, cache)


# each record may come 30 s late (see PfcMonitorListener.wait_for)
@pytest.mark.timeout(120)
async def test_forwarding_cache_reports_miss_then_hit(
    tmp_path, origin, forwarding_cache, monitor, payload
):
    url = f"{forwarding_cache.url}//{origin.url}/{LFN}"

    assert await asyncio.to_thread(_read, url) == payload
    miss = await monitor.wait_for(lambda r: r["lfn"] == LFN)
    # Reads less than ~0.5 s apart share one record: wait for the cold read's record first.
    assert await asyncio.to_thread(_read, url) == payload
    hit = await monitor.wait_for(lambda r: r["lfn"] == LFN and r is not miss)

    # remotes is the miss signal: prefetch makes a cold read count its bytes as b_hit.
    assert miss["remotes"] == [f"127.0.0.1:{origin.port}"]
    assert miss["size"] == SIZE
    assert miss["n_blks"] == miss["n_blks_done"] == 3
    assert hit["remotes"] == []
    assert (hit["access_cnt"], hit["b_hit"], hit["b_miss"]) == (2, SIZE, 0)
    opens = xrootd.log_path(tmp_path / "run", origin).read_text().count("ofs_open: ")
    assert opens == 1, "the origin saw the cold read only"


@pytest.fixture
def direct_cache(tmp_path, origin) -> Iterator[xrootd.XRootDServer]:
    cache = xrootd.start_xcache(tmp_path / "run", origin=origin)
    yield cache
    xrootd.stop_server(cache)
    xrootd.stop_server(cache)  # idempotent


def test_killed_cache_fails_readiness_fast(direct_cache):
    xrootd.wait_ready(direct_cache.url, timeout=2)

    os.kill(direct_cache.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        xrootd.wait_ready(direct_cache.url, timeout=1)
    assert time.monotonic() - started < 3


def test_cache_read_fails_fast_when_origin_is_dead(origin, direct_cache, payload):
    assert _read(f"{direct_cache.url}/{LFN}") == payload
    xrootd.stop_server(origin)

    started = time.monotonic()
    status = _open_status(f"{direct_cache.url}/{NOTEBOOK}/untouched.txt")
    assert not status.ok
    assert time.monotonic() - started < 3


@pytest.fixture
def fuse_ready() -> None:
    usable, reason = xrootd.fuse_available()
    if not usable:
        pytest.skip(reason)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_ready")
def test_fuse_mount_needs_remount_after_origin_outage(tmp_path, origin, payload):
    source = f"{origin.url}/{NOTEBOOK}"
    mount = xrootd.mount_xrootdfs(source, tmp_path / "mnt")
    server = origin
    try:
        assert (mount.mountpoint / "events.bin").read_bytes() == payload

        os.kill(origin.pid, signal.SIGKILL)
        with pytest.raises(OSError):
            (mount.mountpoint / "untouched.txt").read_bytes()
        # xrootdfs itself still answers statfs: a dead origin does not make the mount stale.
        assert not xrootd.is_stale(mount.mountpoint)

        server = xrootd.restart_server(origin, tmp_path / "run")
        assert server.port == origin.port
        time.sleep(1.5)
        with pytest.raises(OSError):  # a mount used during the outage does not recover
            list(mount.mountpoint.iterdir())

        xrootd.unmount(mount)
        mount = xrootd.mount_xrootdfs(source, tmp_path / "mnt")
        assert (mount.mountpoint / "events.bin").read_bytes() == payload
        assert (mount.mountpoint / "untouched.txt").read_bytes() == b"never read before\n"
    finally:
        xrootd.unmount(mount)
        xrootd.unmount(mount)  # idempotent
        xrootd.stop_server(server)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_ready")
def test_killed_xrootdfs_leaves_a_stale_mount(tmp_path, origin):
    mount = xrootd.mount_xrootdfs(f"{origin.url}/{NOTEBOOK}", tmp_path / "mnt")
    try:
        assert not xrootd.is_stale(mount.mountpoint)
        os.kill(mount.pid, signal.SIGKILL)
        # The kernel aborts the FUSE connection once the process is gone, not at the signal.
        assert _eventually(lambda: xrootd.is_stale(mount.mountpoint), timeout=2)
    finally:
        xrootd.unmount(mount)
    assert not xrootd.is_stale(mount.mountpoint)
