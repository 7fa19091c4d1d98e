"""The main job, on one machine: a real lake, the four services, and a user staging a dataset.

Starts a real XRootD origin (serving the RSEs' storage) and a forwarding XCache, a real Rucio
(PostgreSQL, REST API, conveyor with the mock transfertool, judge, hermes over STOMP to the
local RabbitMQ), mounts the NOTEBOOK RSE with xrootdfs where FUSE is usable, runs the four
dlaas services as separate processes and then, as the user alice, exactly what a user types:

    dlaas stage user.alice:ds2 --rse NOTEBOOK --wait

Finally it reads one ready file through its XCache URL and checks its adler32. Everything it
started is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from dlaas.logging import configure_logging
from dlaas_devstack import xrootd
from dlaas_devstack.broker import Admin, create_vhost
from dlaas_devstack.lake import NOTEBOOK, LakeFile, build_lake, make_dataset, rse_dir
from dlaas_devstack.rucio import RucioStack, RucioStackSettings
from dlaas_devstack.services import DlaasConfig, DlaasServices

VHOST = "dlaas-demo"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


@contextlib.contextmanager
def _xrootd(workdir: Path, storage: Path) -> Iterator[tuple[int, str | None]]:
    """An origin over ``storage`` and a forwarding cache: (origin port, cache URL)."""
    if shutil.which("xrootd") is None:
        _say("xrootd not installed: PFNs will name port 1094 and no cache runs")
        yield 1094, None
        return
    storage.mkdir(parents=True, exist_ok=True)
    origin = xrootd.start_origin(workdir / "xrootd", storage)
    cache = xrootd.start_xcache(workdir / "xrootd", origin=None)
    try:
        yield origin.port, cache.url
    finally:
        xrootd.stop_server(cache)
        xrootd.stop_server(origin)


@contextlib.contextmanager
def _mount(workdir: Path, origin_port: int, storage_dir: Path) -> Iterator[Path]:
    """The NOTEBOOK RSE as the notebook node sees it: xrootdfs if possible, else its folder."""
    usable, reason = xrootd.fuse_available()
    if not usable or shutil.which("xrootd") is None:
        _say(f"no FUSE mount ({reason}): the notebook's view points at the RSE folder")
        yield storage_dir
        return
    source = f"root://127.0.0.1:{origin_port}//data/{NOTEBOOK.lower()}"
    mount = xrootd.mount_xrootdfs(source, workdir / "mnt" / NOTEBOOK.lower())
    try:
        yield mount.mountpoint
    finally:
        xrootd.unmount(mount)


def _read_through_cache(url: str, file: LakeFile) -> None:
    from XRootD import client  # noqa: PLC0415  (reads XRD_* settings at import)

    with client.File() as remote:
        status, _ = remote.open(url, timeout=30)
        if not status.ok:
            raise RuntimeError(f"cannot open {url}: {status.message}")
        status, data = remote.read(timeout=30)
    checksum = f"{zlib.adler32(data):08x}"
    verdict = (
        "matches Rucio" if checksum == file.adler32 else f"!= Rucio's {file.adler32}"
    )
    print(f"read {len(data)} bytes through {url}: adler32 {checksum} {verdict}")


def run(workdir: Path, n_files: int) -> int:
    """Stand everything up, stage ``user.alice:ds2`` as alice, tear down; the CLI's exit code."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    vhost = create_vhost(Admin(), VHOST)
    storage = workdir / "rucio" / "storage"
    with _xrootd(workdir, storage) as (origin_port, cache_url):
        _say(
            "starting Rucio (PostgreSQL, REST, conveyor, judge, hermes -> RabbitMQ STOMP)"
        )
        settings = RucioStackSettings(
            workdir=workdir / "rucio",
            amqp_vhost=VHOST,
            db_name="dlaas_demo",
            xrootd_port=origin_port,
        )
        with RucioStack(settings) as stack:
            build_lake(stack)
            files = make_dataset(stack, "user.alice", "ds2", n_files)
            print(f"lake: ORIGIN and NOTEBOOK, dataset user.alice:ds2 of {n_files} files")
            with _mount(workdir, origin_port, rse_dir(stack, NOTEBOOK)) as mount:
                config = DlaasConfig(
                    workdir=workdir / "dlaas",
                    amqp_url=vhost.url(),
                    rucio_host=stack.rucio_host,
                    mount_path=mount,
                    path_begins_at=2,
                    cache_endpoints=(cache_url,) if cache_url else (),
                )
                with DlaasServices(config):
                    code = _stage_as_alice(vhost.url("alice"))
                    if code == 0 and cache_url:
                        pfn = f"root://127.0.0.1:{origin_port}/{files[0].pfn_path_at(NOTEBOOK)}"
                        _read_through_cache(f"{cache_url}//{pfn}", files[0])
    _say(f"stopped everything; logs under {workdir}")
    vhost.delete()
    return code


def _stage_as_alice(url: str) -> int:
    command = ["dlaas", "stage", "user.alice:ds2", "--rse", NOTEBOOK, "--wait"]
    _say(f"as alice: {' '.join(command)}")
    started = time.monotonic()
    dlaas = str(Path(sys.executable).parent / "dlaas")
    done = subprocess.run(
        [dlaas, *command[1:]],
        env={**os.environ, "DLAAS_BUS__URL": url},
        check=False,
        timeout=600,
    )
    print(f"(dlaas exited {done.returncode} after {time.monotonic() - started:.1f} s)")
    return done.returncode


def main() -> None:
    """``python -m dlaas_devstack.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".dlaas/demo").resolve())
    parser.add_argument("--files", type=int, default=3)
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")
    sys.exit(run(args.workdir, args.files))


if __name__ == "__main__":
    main()
