"""The main job, on one machine: a real lake, the four services, and a user staging a dataset.

Starts a real XRootD origin (serving the RSEs' storage) and a forwarding XCache, a real Rucio
(PostgreSQL, REST API, conveyor with the mock transfertool, judge, hermes over STOMP to the
local RabbitMQ), mounts the NOTEBOOK RSE with xrootdfs where FUSE is usable, runs the four
dlaas services as separate processes and then, as the user alice, exactly what a user types:

    dlaas stage user.alice:ds2 --rse NOTEBOOK --wait

It reads one ready file through its XCache URL and checks its adler32, then stages the way
users pick data today: an ESAP shopping basket saved as JSON (one Rucio item, one item of
another archive) and a notebook whose ``rucio_attachments`` name a dataset:

    dlaas stage --from basket.json --rse NOTEBOOK --wait
    dlaas stage --from analysis.ipynb --rse NOTEBOOK --wait

Everything it started is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
            make_dataset(stack, "user.alice", "ds3", 2)
            make_dataset(stack, "user.alice", "ds4", 2)
            print(
                f"lake: ORIGIN and NOTEBOOK, datasets user.alice:ds2 of {n_files} files, "
                "user.alice:ds3 and user.alice:ds4 of 2"
            )
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
                    url = vhost.url("alice")
                    code = _stage_as_alice(url, ["user.alice:ds2"])
                    if code == 0 and cache_url:
                        pfn = f"root://127.0.0.1:{origin_port}/{files[0].pfn_path_at(NOTEBOOK)}"
                        _read_through_cache(f"{cache_url}//{pfn}", files[0])
                    basket, notebook = _users_files(workdir)
                    code = code or _stage_as_alice(url, ["--from", str(basket)])
                    code = code or _stage_as_alice(url, ["--from", str(notebook)])
    _drop_database("dlaas_demo")
    _say(f"stopped everything; logs under {workdir}")
    vhost.delete()
    return code


def _drop_database(name: str) -> None:
    """The demo's Rucio database goes with it (the next run makes a fresh one)."""
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
         f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
        check=False, capture_output=True, timeout=60,
    )  # fmt: skip


def _users_files(workdir: Path) -> tuple[Path, Path]:
    """A saved ESAP basket and a notebook of the Rucio JupyterLab extension, as users have."""
    basket = workdir / "basket.json"
    items = [
        {"archive": "rucio", "record": {"scope": "user.alice", "name": "ds3"}},
        {"archive": "zenodo", "record": {"doi": "10.5281/zenodo.1234"}},
    ]
    # ESAP's API answer: item_data is a JSON string inside each shopping_cart item
    cart = [{"id": i, "item_data": json.dumps(item)} for i, item in enumerate(items)]
    basket.write_text(json.dumps({"results": [{"shopping_cart": cart}]}))
    notebook = workdir / "analysis.ipynb"
    attachment = {"did": "user.alice:ds4", "type": "dataset", "variableName": "events"}
    notebook.write_text(json.dumps({
        "cells": [], "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"rucio_attachments": [attachment]},
    }))  # fmt: skip
    return basket, notebook


def _stage_as_alice(url: str, what: list[str]) -> int:
    command = ["dlaas", "stage", *what, "--rse", NOTEBOOK, "--wait"]
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
