"""One background loop of a service (probes, watchers, senders), started and stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    """Holds at most one running task; :meth:`stop` cancels it and waits until it is gone."""

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None

    def start(self, loop: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        """Run ``loop()`` in the background (a second start while one runs is refused)."""
        if self._task is not None:
            raise RuntimeError(f"{name} already runs")
        self._task = asyncio.get_running_loop().create_task(loop(), name=name)

    @property
    def running(self) -> bool:
        """Whether the task runs."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancel the task and wait for it (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
