"""Answer many concurrent replica questions with one Rucio call.

Hermes delivers transfer-done in bursts, one message per file; the consumer runs up to
``prefetch`` handlers at once. Each asks "is this file AVAILABLE at this RSE?"; the batcher
collects the questions for ``window_s`` (or until ``max_size``) and asks Rucio once per RSE,
so a burst costs one ``list_replicas`` call instead of one per file.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from dlaas_stager.ports import Catalog, Replica


class ReplicaBatcher:
    """Coalesces ``replicas_at`` calls of concurrent handlers."""

    def __init__(
        self, catalog: Catalog, *, window_s: float = 0.05, max_size: int = 500
    ) -> None:
        self.catalog = catalog
        self.window_s = window_s
        self.max_size = max_size
        self._pending: dict[str, dict[str, list[asyncio.Future[Replica | None]]]] = (
            defaultdict(dict)
        )
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done

    async def replica(self, did: str, rse: str) -> Replica | None:
        """The file's replica at ``rse`` (None when Rucio lists none)."""
        future: asyncio.Future[Replica | None] = (
            asyncio.get_running_loop().create_future()
        )
        waiting = self._pending[rse]
        waiting.setdefault(did, []).append(future)
        if len(waiting) >= self.max_size:
            self._flush(rse)
        elif rse not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[rse] = loop.call_later(self.window_s, self._flush, rse)
        return await future

    def _flush(self, rse: str) -> None:
        timer = self._timers.pop(rse, None)
        if timer is not None:
            timer.cancel()
        waiting = self._pending.pop(rse, {})
        if waiting:
            task = asyncio.get_running_loop().create_task(self._ask(rse, waiting))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ask(
        self, rse: str, waiting: dict[str, list[asyncio.Future[Replica | None]]]
    ) -> None:
        try:
            replicas = await self.catalog.replicas_at(sorted(waiting), rse)
        except Exception as exc:  # every waiting handler sees the failure (and retries)
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for did, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(replicas.get(did))
