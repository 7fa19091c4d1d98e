"""The fuse agent's handlers: show ready files in the user's view once readable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import FileFailed, FileReady, FileVisible
from dlaas.errors import PermanentError, TransientError
from dlaas_fuse_agent import blocking, domain
from dlaas_fuse_agent.adapters import download
from dlaas_fuse_agent.settings import DownloadSpec, FuseOptions

log = structlog.get_logger(__name__)


def _readable(path: Path) -> None:
    with path.open("rb") as handle:
        handle.read(1)


def _make_dirs(base: Path, parent: Path) -> None:
    """Create base/... down to ``parent``, refusing any step that is a symlink.

    A user who can write in their view could plant ``scope -> /etc``: following it would
    write outside the view.
    """
    base.parent.mkdir(parents=True, exist_ok=True)
    steps = [base]
    for part in parent.relative_to(base).parts:
        steps.append(steps[-1] / part)
    for current in steps:
        with contextlib.suppress(FileExistsError):
            current.mkdir()
        if current.is_symlink() or not current.is_dir():
            raise PermanentError(f"{current} is not a plain directory of the user's view")


def _link(view: Path, target: Path, base: Path) -> None:
    """Point ``view`` at ``target`` atomically (a repeat leaves the same link)."""
    _make_dirs(base, view.parent)
    temporary = view.with_name(f".{view.name}.dlaas-tmp")
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(view)
    except IsADirectoryError as exc:
        temporary.unlink(missing_ok=True)
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

    async def on_file_ready(self, event: FileReady, delivery: Delivery) -> None:
        """Check the file is readable through the mount, link it into the user's view."""
        with structlog.contextvars.bound_contextvars(
            request_id=str(event.request_id), user=event.user, did=event.did
        ):
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
        try:
            await blocking.call(
                lambda: _readable(target), self.options.check_timeout_s, "fuse-read"
            )
        except (OSError, TimeoutError) as exc:
            self.on_unreadable(event.rse)  # the mount's watcher checks it now
            if delivery.last_attempt:
                raise PermanentError(
                    f"not readable through the mount at {target}: {exc}"
                ) from exc
            raise TransientError(f"not readable yet at {target}: {exc}") from exc
        base = domain.user_view(self.options.views_root, event.user)
        await asyncio.to_thread(_link, view, target, base)
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
            await asyncio.to_thread(_make_dirs, base, view.parent)
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
