"""Download mode: an RSE the node cannot mount, its files copied over XRootD and verified.

A real XRootD origin on loopback and the fuse agent in this process against the real broker;
no FUSE needed.
"""

from __future__ import annotations

import random
import shutil
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlaas.contracts import FileFailed, FileReady, FileVisible
from dlaas_devstack import xrootd
from dlaas_devstack.broker import Vhost, create_vhost
from dlaas_fuse_agent.settings import FuseOptions
from tests.broker import need
from tests.integration.test_fuse_agent import _answer, outcomes, running_agent

pytestmark = [pytest.mark.broker, pytest.mark.xrootd, pytest.mark.timeout(90)]

SIZE = 3_000_000
REMOTE = "/data/remote"


@pytest.fixture(scope="module")
def vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost of this module's own: its visible and failed events reach no other test."""
    own = create_vhost(broker.admin, f"{broker.name}-download")
    yield Vhost(broker.admin, own.name, broker.host, broker.port)
    own.delete()


@pytest.fixture
def payload() -> bytes:
    return random.Random(11).randbytes(SIZE)


@pytest.fixture
def origin(tmp_path: Path, payload: bytes) -> Iterator[xrootd.XRootDServer]:
    if shutil.which("xrootd") is None:
        need("xrootd not installed")
    folder = tmp_path / "storage" / REMOTE.lstrip("/") / "user.alice"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(payload)
    server = xrootd.start_origin(tmp_path / "run", tmp_path / "storage")
    yield server
    xrootd.stop_server(server)


def _adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def _options(tmp_path: Path, **download: object) -> FuseOptions:
    return FuseOptions.model_validate(
        {
            "downloads": [{"rse": "REMOTE", "read_from": "origin", **download}],
            "views_root": str(tmp_path / "views"),
        }
    )


def _ready(origin: str, adler32: str | None, name: str = "big.bin") -> FileReady:
    pfn = f"{origin}/{REMOTE}/user.alice/{name}"
    return FileReady(
        request_id=uuid.uuid4(),
        user="alice",
        did=f"user.alice:{name}",
        rse="REMOTE",
        pfn=pfn,
        bytes=SIZE,
        adler32=adler32,
        cache_url=pfn,
    )


async def test_a_file_is_copied_into_the_view_verified_and_once(
    vhost, tmp_path, origin, payload
):
    view = tmp_path / "views" / "alice" / "user.alice" / "big.bin"
    options = _options(tmp_path)
    async with running_agent(vhost.url(), options) as bus, outcomes(vhost.url()) as got:
        visible = await _answer(bus, got, _ready(origin.url, _adler32(payload)))
        assert isinstance(visible, FileVisible), visible
        assert Path(visible.path) == view
        assert not view.is_symlink()
        assert view.read_bytes() == payload
        assert visible.mount_path.startswith("root://")
        first = view.stat().st_mtime_ns

        again = await _answer(bus, got, _ready(origin.url, _adler32(payload)))
        assert isinstance(again, FileVisible)
        assert view.stat().st_mtime_ns == first  # a repeat copies nothing
        assert not list(view.parent.glob(".*dlaas-part"))


async def test_a_copy_that_does_not_match_rucio_is_never_shown(
    vhost, tmp_path, origin, payload
):
    view = tmp_path / "views" / "alice" / "user.alice" / "big.bin"
    async with (
        running_agent(vhost.url(), _options(tmp_path)) as bus,
        outcomes(vhost.url()) as got,
    ):
        failed = await _answer(bus, got, _ready(origin.url, "0badc0de"))
        assert isinstance(failed, FileFailed), failed
        assert "does not match Rucio's 0badc0de" in failed.reason
        assert not view.exists()  # never a corrupt file in the view
        assert not list(view.parent.glob(".*dlaas-part"))

        missing = await _answer(bus, got, _ready(origin.url, None, name="gone.bin"))
        assert isinstance(missing, FileFailed)
        assert "gone.bin" in missing.reason

    small = _options(tmp_path, max_bytes=1000)
    async with running_agent(vhost.url(), small) as bus, outcomes(vhost.url()) as got:
        refused = await _answer(bus, got, _ready(origin.url, _adler32(payload)))
        assert isinstance(refused, FileFailed)
        assert "download limit" in refused.reason
