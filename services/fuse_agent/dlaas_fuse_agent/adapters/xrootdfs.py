"""xrootdfs FUSE mounts: started, checked and stopped by the agent, never blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from pathlib import Path

import structlog

from dlaas.bus.metrics import EXTERNAL_CALLS
from dlaas_fuse_agent import blocking
from dlaas_fuse_agent.domain import probe_target
from dlaas_fuse_agent.ports import CheckResult
from dlaas_fuse_agent.settings import XROOTDFS_ENV, MountSpec, WatchOptions

log = structlog.get_logger(__name__)

_POLL_S = 0.02


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is in the mount table (never touches the mount: it may hang)."""
    escaped = str(path).translate({32: r"\040", 9: r"\011", 10: r"\012", 92: r"\134"})
    with Path("/proc/self/mounts").open(encoding="utf-8") as table:
        return any(line.split(" ")[1] == escaped for line in table)


def touch(mount: Path, target: Path) -> None:
    """Ask the mount for statfs (ENOTCONN: xrootdfs gone), then list or read ``target``."""
    os.statvfs(mount)
    try:
        with os.scandir(target) as entries:
            next(entries, None)  # makes xrootdfs ask the server for the listing
    except NotADirectoryError:
        with target.open("rb") as handle:
            handle.read(1)


async def _exited(process: asyncio.subprocess.Process, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


class XrootdfsMount:
    """One xrootdfs mount of ``spec.source`` at ``spec.mount_path``."""

    def __init__(self, spec: MountSpec, options: WatchOptions) -> None:
        if spec.source is None:
            raise ValueError(f"mount of {spec.rse} has no xrootdfs source")
        self.spec, self.source, self.options = spec, spec.source, options
        self.path = spec.mount_path.absolute()
        self._target = probe_target(self.path, spec.probe_path)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The running xrootdfs, if any."""
        running = self._process is not None and self._process.returncode is None
        return self._process.pid if running and self._process else None

    async def mount(self) -> None:
        """Clear a leftover mount, start xrootdfs, wait until it answers."""
        await self.unmount()
        self.path.mkdir(parents=True, exist_ok=True)
        self._process = await self._spawn()
        try:
            await self._await_answer(self._process)
        except (OSError, TimeoutError):
            await self.unmount()
            raise
        EXTERNAL_CALLS.labels("fuse", "mount", "ok").inc()
        log.info("fuse_mounted", mount=str(self.path), rse=self.spec.rse, pid=self.pid)

    async def _await_answer(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.options.mount_timeout_s
        while not is_mounted(self.path):
            if process.returncode is not None or time.monotonic() > deadline:
                raise OSError(f"xrootdfs did not mount {self.path} ({self.source})")
            await asyncio.sleep(_POLL_S)
        try:  # answers once its FUSE init has asked the server for its data servers
            await blocking.call(
                lambda: os.statvfs(self.path),
                max(deadline - time.monotonic(), 0.1),
                name="fuse-mount",
            )
        except TimeoutError:  # not answering at all (an OSError too): not kept
            raise
        except OSError as exc:
            # Up, but its server is not: kept mounted, it heals when the server is back
            # (an unmounted empty directory would look like "no files" to the user).
            log.warning("fuse_server_unreachable", mount=str(self.path), error=str(exc))

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self.options.log_dir is None:
            return await self._exec(None)
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        name = "_".join(self.path.parts[1:]) or "root"
        with (self.options.log_dir / f"{name}.log").open("ab") as output:
            return await self._exec(output.fileno())

    async def _exec(self, output: int | None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            self.options.xrootdfs,
            str(self.path),
            "-f",
            "-o",
            f"rdr={self.source}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=os.environ | XROOTDFS_ENV,
            start_new_session=True,  # a Ctrl-C of the agent must not kill it first
        )

    async def unmount(self) -> None:
        """Unmount (lazily when busy), then stop xrootdfs (idempotent)."""
        if is_mounted(self.path) and await self._fusermount("-u") != 0:
            log.warning("fuse_unmount_lazy", mount=str(self.path))
            await self._fusermount("-u", "-z")
        await self._stop_process()

    async def _fusermount(self, *args: str) -> int:
        process = await asyncio.create_subprocess_exec(
            self.options.fusermount,
            *args,
            str(self.path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            return await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            return await process.wait()

    async def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        if await _exited(process, 5):
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        if not await _exited(process, 5):  # stuck in the kernel: outlives even SIGKILL
            log.error("xrootdfs_not_stopping", mount=str(self.path), pid=process.pid)

    async def check(self, timeout_s: float) -> CheckResult:
        """List (or read) the probe path through the mount within ``timeout_s``."""
        if self._process is None or self._process.returncode is not None:
            return CheckResult(ok=False, gone=True, reason="xrootdfs is not running")
        try:
            await blocking.call(
                lambda: touch(self.path, self._target), timeout_s, name="fuse-check"
            )
        except TimeoutError:
            return CheckResult(ok=False, reason=f"no answer within {timeout_s} s")
        except OSError as exc:
            gone = exc.errno == errno.ENOTCONN
            return CheckResult(ok=False, gone=gone, reason=str(exc))
        return CheckResult(ok=True)
