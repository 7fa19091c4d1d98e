"""Answer many concurrent replica questions with one Rucio call.

Hermes delivers transfer-done in bursts, one message per file; the consumer runs up to
``prefetch`` handlers at once. Each asks "is this file AVAILABLE at this RSE?". When Rucio
is not being asked about that RSE, the questions of this loop turn go at once, in one call;
while a call is in flight the next questions gather and go together when it returns (or
after ``window_s``, or at ``max_size``). A burst costs a call or two instead of one per
file, and a lone transfer-done waits for nobody.
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
        self.window_s = window_s  # the longest a question waits behind a call in flight
        self.max_size = max_size
        self._pending: dict[str, dict[str, list[asyncio.Future[Replica | None]]]] = (
            defaultdict(dict)
        )
        self._timers: dict[str, asyncio.TimerHandle | asyncio.Handle] = {}
        self._asking: dict[str, int] = defaultdict(int)  # calls in flight per RSE
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done

    async def replica(self, did: str, rse: str) -> Replica | None:
        """The file's replica at ``rse`` (None when Rucio lists none)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Replica | None] = loop.create_future()
        waiting = self._pending[rse]
        waiting.setdefault(did, []).append(future)
        if len(waiting) >= self.max_size:
            self._flush(rse)
        elif rse not in self._timers:
            self._timers[rse] = (
                loop.call_later(self.window_s, self._flush, rse)
                if self._asking[rse]
                else loop.call_soon(self._flush, rse)  # after the others of this turn
            )
        return await future

    def _flush(self, rse: str) -> None:
        timer = self._timers.pop(rse, None)
        if timer is not None:
            timer.cancel()
        waiting = self._pending.pop(rse, {})
        if waiting:
            self._asking[rse] += 1
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
        finally:
            self._asking[rse] -= 1
            if self._pending.get(rse):  # gathered while this call was in flight: go now
                self._flush(rse)
        for did, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(replicas.get(did))
