"""Download mode: copy a ready file over XRootD into the user's view, checksum verified.

For RSEs a notebook node cannot mount. The file is read with the XRootD Python client and
written beside its final place under a temporary name, its adler32 computed on the way; only
a file whose checksum matches Rucio's is renamed into the view, so the user never sees a
partial or corrupt copy. A repeat (at-least-once) finds the verified file there and copies
nothing.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from dlaas import xrootd_client
from dlaas.errors import TransientError

_CHUNK = 8 * 1024 * 1024
# a whole file may take long to read: calls wait longer than the cache router's probes
REQUEST_TIMEOUT_S = 30


@dataclass(frozen=True)
class Copied:
    """A file in the user's view: its size and adler32, and whether it was copied now."""

    bytes: int
    adler32: str
    copied: bool


def configure_client() -> None:
    """The shared client settings, with a longer request timeout for whole files."""
    xrootd_client.configure_client({"RequestTimeout": REQUEST_TIMEOUT_S})


def _hex(adler: int) -> str:
    return f"{adler & 0xFFFFFFFF:08x}"


def local_adler32(path: Path) -> str:
    """adler32 of a local file, as Rucio writes it."""
    adler = 1
    with path.open("rb") as handle:
        while data := handle.read(_CHUNK):
            adler = zlib.adler32(data, adler)
    return _hex(adler)


def _already_there(view: Path, size: int, adler32: str | None) -> Copied | None:
    """The verified file from an earlier delivery, if ``view`` is one."""
    if view.is_symlink() or not view.is_file() or view.stat().st_size != size:
        return None
    have = local_adler32(view)
    if adler32 is not None and have != adler32.lower():
        return None
    return Copied(size, have, copied=False)


def _open_private(path: Path) -> int:
    """Create ``path`` for writing, never following a link someone planted there."""
    path.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o644)


def download(
    url: str,
    view: Path,
    *,
    size: int,
    adler32: str | None,
    timeout_s: float,
) -> Copied:
    """Copy ``url`` to ``view`` (whose directory exists), verified; blocking.

    Raises:
        PermanentError: the file does not exist at ``url``.
        TransientError: the server failed, the copy took over ``timeout_s``, or what arrived
            does not match Rucio's size or adler32 (a retry may read a good copy).
    """
    found = _already_there(view, size, adler32)
    if found is not None:
        return found
    deadline = time.monotonic() + timeout_s
    partial = view.with_name(f".{view.name}.dlaas-part")
    adler, offset = 1, 0
    try:
        with (
            xrootd_client.client().File() as remote,
            os.fdopen(_open_private(partial), "wb") as out,
        ):
            status, _ = remote.open(url, timeout=xrootd_client.seconds(deadline))
            xrootd_client.check(status, url)
            while True:
                if time.monotonic() > deadline:
                    raise TransientError(f"{url}: copy took over {timeout_s} s")
                status, data = remote.read(
                    offset, _CHUNK, timeout=xrootd_client.seconds(deadline)
                )
                xrootd_client.check(status, url)
                if not data:
                    break
                out.write(data)
                adler = zlib.adler32(data, adler)
                offset += len(data)
            out.flush()
            os.fsync(out.fileno())
        got = _hex(adler)
        if offset != size:
            raise TransientError(f"{url}: {offset} bytes arrived, Rucio has {size}")
        if adler32 is not None and got != adler32.lower():
            raise TransientError(
                f"{url}: adler32 {got} does not match Rucio's {adler32.lower()}"
            )
        partial.replace(view)
    finally:
        partial.unlink(missing_ok=True)
    return Copied(offset, got, copied=True)
