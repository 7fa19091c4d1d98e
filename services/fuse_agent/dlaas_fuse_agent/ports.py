"""What the fuse agent needs from the outside, in domain terms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class CheckResult:
    """One check of a mount: listed or read through it within the timeout, or not."""

    ok: bool
    gone: bool = False  # the FUSE daemon is gone: only a remount helps
    reason: str = ""


class Mount(Protocol):
    """A FUSE mount the agent owns: it mounts, checks and unmounts it."""

    @property
    def path(self) -> Path:
        """Where it is mounted."""

    async def mount(self) -> None:
        """Mount (clearing a leftover mount first); raise OSError or TimeoutError."""

    async def unmount(self) -> None:
        """Unmount and stop the FUSE daemon (idempotent)."""

    async def check(self, timeout_s: float) -> CheckResult:
        """List or read something through the mount."""
