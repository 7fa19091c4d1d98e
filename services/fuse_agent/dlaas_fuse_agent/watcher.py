"""Keeps the agent's mounts healthy: mount at start, check periodically, remount when broken."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from dlaas.background import Background
from dlaas.bus.metrics import EXTERNAL_CALLS
from dlaas_fuse_agent import domain
from dlaas_fuse_agent.ports import Mount
from dlaas_fuse_agent.settings import WatchOptions

log = structlog.get_logger(__name__)


class MountWatcher:
    """Watches one mount; ``poke()`` asks for a check now (a reader just failed)."""

    def __init__(
        self,
        rse: str,
        mount: Mount,
        options: WatchOptions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rse, self.mount, self.options, self.clock = rse, mount, options, clock
        self.health = domain.MountHealth()
        self.policy = domain.RemountPolicy(
            options.failures_to_remount, options.backoff_s, options.max_backoff_s
        )
        self.remounts = 0  # in all, for logs and tests
        self._wake = asyncio.Event()
        self._task = Background()

    @property
    def healthy(self) -> bool:
        """Whether the last check listed or read through the mount."""
        return self.health.healthy

    def poke(self) -> None:
        """Check now instead of at the next interval."""
        self._wake.set()

    async def start(self) -> None:
        """Mount, check once, then watch in the background."""
        await self._mount()
        await self.check_once()
        self._task.start(self._run, f"watch-{self.rse}")

    async def stop(self) -> None:
        """Stop watching and unmount."""
        await self._task.stop()
        await self.mount.unmount()

    async def check_once(self) -> None:
        """One check; remount when the policy says so."""
        result = await self.mount.check(self.options.timeout_s)
        was_healthy = self.healthy
        remount = domain.after_check(
            self.health,
            ok=result.ok,
            gone=result.gone,
            now=self.clock(),
            policy=self.policy,
            reason=result.reason,
        )
        if result.ok and not was_healthy:
            log.info("mount_healthy", rse=self.rse, mount=str(self.mount.path))
        elif not result.ok and was_healthy:
            log.warning("mount_unhealthy", rse=self.rse, reason=result.reason)
        if remount:
            await self._remount(result.reason)

    async def _remount(self, reason: str) -> None:
        self.remounts += 1
        log.warning(
            "mount_remounting", rse=self.rse, reason=reason, attempt=self.remounts
        )
        if await self._mount():
            await self.check_once()

    async def _mount(self) -> bool:
        try:
            await self.mount.mount()
        except (OSError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
        else:
            return True
        EXTERNAL_CALLS.labels("fuse", "mount", "error").inc()
        log.error("mount_failed", rse=self.rse, mount=str(self.mount.path), error=error)
        return False

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.interval_s)
            self._wake.clear()
            await self.check_once()
