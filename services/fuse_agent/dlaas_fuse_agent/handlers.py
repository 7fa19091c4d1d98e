"""The fuse agent's handlers: show ready files in the user's view once readable."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import FileFailed, FileReady, FileVisible
from dlaas.errors import PermanentError, TransientError
from dlaas.logging import bound
from dlaas_fuse_agent import blocking, domain
from dlaas_fuse_agent.adapters import download
from dlaas_fuse_agent.settings import DownloadSpec, FuseOptions

log = structlog.get_logger(__name__)


class _UnreadableError(Exception):
    """The file could not be read through the mount (the OSError is its cause)."""


def _readable(path: Path) -> None:
    """Read a byte through the mount (plain os calls: half the system calls of open())."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _UnreadableError(str(exc)) from exc


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_step(name: str | Path, where: int | None, shown: Path) -> int:
    """Open (making it if need be) one directory step, never through a symlink."""
    for attempt in range(2):
        try:
            return os.open(name, _DIRECTORY, dir_fd=where)
        except FileNotFoundError:
            if attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=where)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # a file, or a symlink
                raise PermanentError(
                    f"{shown} is not a plain directory of the user's view"
                ) from exc
            raise
    raise AssertionError  # pragma: no cover  (the loop returns or raises)


def _open_view_dir(base: Path, parent: Path) -> int:
    """A descriptor of ``parent`` (below ``base``), made as needed, symlinks refused.

    Each step is opened relative to the one before with O_NOFOLLOW, so a ``scope -> /etc``
    planted by the user is refused, and what is created lands in the directory checked.
    """
    base.parent.mkdir(parents=True, exist_ok=True)  # the views root: the agent's own
    fd = _open_step(base, None, base)
    shown = base
    try:
        for part in parent.relative_to(base).parts:
            shown = shown / part
            step = _open_step(part, fd, shown)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_view_dir(base: Path, parent: Path) -> None:
    """Make ``parent`` below ``base`` as :func:`_open_view_dir` does (download mode)."""
    os.close(_open_view_dir(base, parent))


class _ViewDirs(threading.local):
    """Directories of the views this worker thread opened safely, kept open (a few).

    Opening a file's directory step by step costs seven system calls, each a hand-over of
    the GIL between the worker and the event loop; most files of a request share their
    directory. A kept directory is used again only while its path still leads to it (one
    ``lstat``: same device and inode), so a directory the user removed, or replaced by a
    symlink, is opened again the safe way. Per thread: a descriptor is never closed while
    another thread links through it.
    """

    KEEP = 64

    def __init__(self) -> None:
        self.open: OrderedDict[Path, tuple[int, int, int]] = OrderedDict()

    def get(self, path: Path) -> int | None:
        """The kept descriptor of ``path`` if the path still leads to it."""
        kept = self.open.get(path)
        if kept is None:
            return None
        fd, device, inode = kept
        try:
            now = path.lstat()
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (device, inode):
            self.forget(path)
            return None
        self.open.move_to_end(path)
        return fd

    def keep(self, path: Path, fd: int) -> None:
        """Keep ``fd`` (just opened the safe way) for ``path``; close the oldest beyond KEEP."""
        self.forget(path)
        found = os.fstat(fd)
        self.open[path] = (fd, found.st_dev, found.st_ino)
        while len(self.open) > self.KEEP:
            os.close(self.open.popitem(last=False)[1][0])

    def forget(self, path: Path) -> None:
        """Close and drop the kept descriptor of ``path``, if any."""
        kept = self.open.pop(path, None)
        if kept is not None:
            os.close(kept[0])


_VIEW_DIRS = _ViewDirs()


def _link(view: Path, target: Path, base: Path) -> None:
    """Point ``view`` at ``target`` atomically (a repeat leaves the same link)."""
    for fresh in (False, True):
        fd = None if fresh else _VIEW_DIRS.get(view.parent)
        if fd is None:
            fd = _open_view_dir(base, view.parent)
            _VIEW_DIRS.keep(view.parent, fd)
        try:
            os.symlink(target, view.name, dir_fd=fd)  # the first time: one call
        except FileExistsError:
            _replace_link(fd, view, target)
        except FileNotFoundError:  # the kept directory was removed since its check
            if fresh:
                raise
            continue
        return


def _replace_link(fd: int, view: Path, target: Path) -> None:
    """``view`` exists in the directory ``fd``: leave the same link, else swap it."""
    with contextlib.suppress(OSError):  # not a link (a file, a directory)
        if os.readlink(view.name, dir_fd=fd) == str(target):
            return  # a repeat
    temporary = f".{view.name}.dlaas-tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=fd)
    os.symlink(target, temporary, dir_fd=fd)
    try:
        os.replace(temporary, view.name, src_dir_fd=fd, dst_dir_fd=fd)
    except IsADirectoryError as exc:
        os.unlink(temporary, dir_fd=fd)
        raise PermanentError(f"{view} is a directory: not replaced") from exc


class _OfRse(Protocol):
    @property
    def rse(self) -> str: ...
    @property
    def instance(self) -> str | None: ...


_Spec = TypeVar("_Spec", bound=_OfRse)


def _for(specs: Sequence[_Spec], event: FileReady) -> _Spec | None:
    """The spec of the event's RSE: of its instance if one is, else of any instance."""
    same = [
        s for s in specs if s.rse == event.rse and s.instance in (None, event.instance)
    ]
    return next((s for s in same if s.instance is not None), None) or next(
        iter(same), None
    )


@dataclass(frozen=True)
class FuseAgent:
    """Handlers with their dependencies."""

    bus: Bus
    options: FuseOptions
    on_unreadable: Callable[[str], None] = field(default=lambda _rse: None)
    # the mount checks of files ready at the same moment share one trip to a thread
    checks: blocking.Grouped = field(default_factory=blocking.Grouped)

    async def on_file_ready(self, event: FileReady, delivery: Delivery) -> None:
        """Check the file is readable through the mount, link it into the user's view."""
        with bound(request_id=str(event.request_id), user=event.user, did=event.did):
            try:
                view, target = await self._show(event, delivery)
            except PermanentError as exc:
                await self._fail(event, str(exc), delivery)
                return
            visible = FileVisible(
                **event.model_dump(exclude={"event_id", "occurred_at"}),
                path=str(view),
                mount_path=target,
            )
            await self.bus.publish(visible, correlation_id=delivery.correlation_id)
            log.info("file_visible", path=str(view), mount=target)

    async def _show(self, event: FileReady, delivery: Delivery) -> tuple[Path, str]:
        mount = _for(self.options.mounts, event)
        if mount is None:
            spec = _for(self.options.downloads, event)
            if spec is not None:
                return await self._download(event, spec, delivery)
            raise PermanentError(f"no mount of RSE {event.rse} on this node")
        target = domain.mount_path(event.pfn, mount.mount_path, mount.path_begins_at)
        view = domain.view_path(self.options.views_root, event.user, event.did)
        base = domain.user_view(self.options.views_root, event.user)

        def check_and_link() -> None:  # one trip to a worker thread for both
            _readable(target)
            _link(view, target, base)

        try:
            await self.checks.call(
                check_and_link, self.options.check_timeout_s, "fuse-read"
            )
        except (_UnreadableError, TimeoutError) as exc:
            self.on_unreadable(event.rse)  # the mount's watcher checks it now
            if delivery.last_attempt:
                raise PermanentError(
                    f"not readable through the mount at {target}: {exc}"
                ) from exc
            raise TransientError(f"not readable yet at {target}: {exc}") from exc
        return view, str(target)

    async def _download(
        self, event: FileReady, spec: DownloadSpec, delivery: Delivery
    ) -> tuple[Path, str]:
        """Copy the file into the view over XRootD (download mode), verified."""
        if spec.max_bytes is not None and event.bytes > spec.max_bytes:
            raise PermanentError(
                f"{event.bytes} bytes is over this node's download limit "
                f"({spec.max_bytes}) for {event.rse}"
            )
        view = domain.view_path(self.options.views_root, event.user, event.did)
        base = domain.user_view(self.options.views_root, event.user)
        url = event.cache_url if spec.read_from == "cache" else event.pfn
        try:
            await asyncio.to_thread(_make_view_dir, base, view.parent)
            copied = await blocking.call(
                lambda: download.download(
                    url, view, size=event.bytes, adler32=event.adler32,
                    timeout_s=spec.timeout_s,
                ),
                spec.timeout_s + 5,
                "xrd-download",
            )  # fmt: skip
        except IsADirectoryError as exc:
            raise PermanentError(f"{view} is a directory: not replaced") from exc
        except (TransientError, OSError, TimeoutError) as exc:
            if delivery.last_attempt:
                raise PermanentError(f"download failed: {exc}") from exc
            raise TransientError(f"download failed: {exc}") from exc
        log.info(
            "file_downloaded",
            url=url,
            bytes=copied.bytes,
            adler32=copied.adler32,
            copied=copied.copied,
        )
        return view, url

    async def _fail(self, event: FileReady, reason: str, delivery: Delivery) -> None:
        log.error("file_not_shown", reason=reason)
        failed = FileFailed(
            request_id=event.request_id,
            user=event.user,
            did=event.did,
            reason=reason,
            stage="mount",
        )
        await self.bus.publish(failed, correlation_id=delivery.correlation_id)
