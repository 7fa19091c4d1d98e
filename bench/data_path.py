"""The data path's figures: read throughput of a large file and the mount's healing time.

``.venv/bin/python bench/data_path.py [--size-mb 100] [--repeat 3]`` starts a real XRootD
origin and a forwarding XCache on loopback, then

- reads a file of ``--size-mb`` whole with the XRootD client (8 MiB requests, one stream):
  from the origin, cold through the cache (first read) and warm (second read); each read's
  adler32 is checked; a fresh file per repeat, so every cold read is cold;
- where FUSE is usable, mounts the origin with the fuse agent's own watcher, kills the
  origin, uses the mount during the outage, restarts the origin and times how long until a
  file reads through the mount again, for a few watcher settings.

The origin's file was just written, so it reads from the page cache: origin figures are a
best case for the disk, not for the network path.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

for _key, _value in {
    "XRD_CONNECTIONWINDOW": "2",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "10",
    "XRD_STREAMERRORWINDOW": "1",
}.items():
    os.environ.setdefault(_key, _value)

from dlaas_devstack import xrootd  # noqa: E402 - after the XRD_* settings
from dlaas_fuse_agent import blocking  # noqa: E402
from dlaas_fuse_agent.adapters.xrootdfs import XrootdfsMount  # noqa: E402
from dlaas_fuse_agent.settings import MountSpec, WatchOptions  # noqa: E402
from dlaas_fuse_agent.watcher import MountWatcher  # noqa: E402

CHUNK = 8 * 1024 * 1024
WIDTH = 70  # of the table's first column
FOLDER = "/data/notebook/bench"


def read_whole(url: str) -> tuple[float, int, str]:
    """Seconds to read ``url`` whole, its size and adler32 (computed after the clock)."""
    from XRootD import client  # noqa: PLC0415 - after the XRD_* settings

    chunks: list[bytes] = []
    started = time.perf_counter()
    with client.File() as remote:
        status, _ = remote.open(url, timeout=60)
        if not status.ok:
            raise OSError(f"{url}: {status.message}")
        offset = 0
        while True:
            status, data = remote.read(offset, CHUNK, timeout=60)
            if not status.ok:
                raise OSError(f"{url}: {status.message}")
            if not data:
                break
            chunks.append(data)
            offset += len(data)
    elapsed = time.perf_counter() - started
    adler = 1
    for chunk in chunks:
        adler = zlib.adler32(chunk, adler)
    return elapsed, offset, f"{adler & 0xFFFFFFFF:08x}"


def make_file(storage: Path, index: int, size: int) -> tuple[str, str]:
    """A random file of ``size`` bytes; its path on the origin and adler32."""
    path = f"{FOLDER}/big{index}.bin"
    target = storage / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    adler = 1
    with target.open("wb") as out:
        for start in range(0, size, CHUNK):
            block = os.urandom(min(CHUNK, size - start))
            adler = zlib.adler32(block, adler)
            out.write(block)
    return path, f"{adler & 0xFFFFFFFF:08x}"


def throughput(work: Path, size: int, repeat: int) -> dict[str, list[float]]:
    """MB/s of each kind of read, one value per repeat."""
    storage = work / "storage"
    files = [make_file(storage, i, size) for i in range(repeat)]
    origin = xrootd.start_origin(work / "run", storage)
    cache = xrootd.start_xcache(work / "run", origin=None)
    rates: dict[str, list[float]] = {"origin": [], "cold cache": [], "warm cache": []}
    try:
        for path, adler in files:
            direct = f"{origin.url}/{path}"
            through = f"{cache.url}//{direct}"
            for kind, url in (
                ("origin", direct),
                ("cold cache", through),
                ("warm cache", through),
            ):
                seconds, read, checksum = read_whole(url)
                if (read, checksum) != (size, adler):
                    raise RuntimeError(f"{url}: read {read} bytes, adler32 {checksum}")
                rates[kind].append(size / seconds / 1e6)
    finally:
        xrootd.stop_server(cache)
        xrootd.stop_server(origin)
    return rates


def _reads(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


async def _until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` holds; a call stuck in the mount counts as false."""
    started = time.monotonic()
    while not await _try(condition, 2.0):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not healthy after {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _try(condition: Callable[[], bool], timeout: float) -> bool:
    try:
        return await blocking.call(condition, timeout, "bench-read")
    except TimeoutError:
        print(f"a read through the mount hung for {timeout} s: abandoned", flush=True)
        return False


async def heal_time(work: Path, options: WatchOptions) -> float:
    """Seconds from the origin's restart (ready) to a file read through the mount."""
    storage = work / "storage"
    small = storage / FOLDER.lstrip("/") / "small.txt"
    small.parent.mkdir(parents=True, exist_ok=True)
    small.write_text("hello\n")
    origin = xrootd.start_origin(work / "run", storage)
    spec = MountSpec(
        rse="NOTEBOOK", mount_path=work / "mnt", source=f"{origin.url}/{FOLDER}"
    )
    options = options.model_copy(update={"log_dir": work / "logs"})
    watcher = MountWatcher("NOTEBOOK", XrootdfsMount(spec, options), options)
    await watcher.start()
    try:
        os.kill(origin.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        if await _try(lambda: _reads(spec.mount_path / "small.txt"), 15):
            raise RuntimeError("read through the mount with the origin down")
        await asyncio.sleep(2 * options.interval_s)  # the watcher sees the outage
        origin = await asyncio.to_thread(xrootd.restart_server, origin, work / "run")
        return await _until(lambda: _reads(spec.mount_path / "small.txt"), 120)
    finally:
        await watcher.stop()
        xrootd.stop_server(origin)


SETTINGS = {
    "agent defaults (check 5 s, remount after 2)": WatchOptions(),
    "check 0.5 s, remount after 1": WatchOptions(
        interval_s=0.5, failures_to_remount=1, backoff_s=0.5, max_backoff_s=2
    ),
    "check 0.5 s, never remount (xrootdfs alone)": WatchOptions(
        interval_s=0.5, failures_to_remount=10**6
    ),
}


def _row(name: str, values: list[float], unit: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"| {name:<{WIDTH}} | {mid:>9.2f} | {low:>9.2f} | {high:>9.2f} | {unit:<4} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100, help="file size, MB (1e6)")
    parser.add_argument("--repeat", type=int, default=3, help="files / restarts each")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(600, exit=True)  # a hang shows where, then ends
    size = args.size_mb * 1_000_000
    print(f"| {'measure':<{WIDTH}} | {'median':>9} | {'min':>9} | {'max':>9} | unit |")
    print(f"|{'-' * (WIDTH + 2)}|{'-' * 11}|{'-' * 11}|{'-' * 11}|------|")
    with tempfile.TemporaryDirectory(prefix="dlaas-bench-") as tmp:
        rates = throughput(Path(tmp) / "read", size, args.repeat)
        for kind, values in rates.items():
            print(_row(f"read {args.size_mb} MB: {kind}", values, "MB/s"), flush=True)
        usable, reason = xrootd.fuse_available()
        if not usable:
            print(f"mount healing not measured: {reason}")
            return 0
        for name, options in SETTINGS.items():
            times = [
                asyncio.run(heal_time(Path(tmp) / f"heal-{i}", options))
                for i in range(args.repeat)
            ]
            print(_row(f"restart -> healthy mount: {name}", times, "s"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
