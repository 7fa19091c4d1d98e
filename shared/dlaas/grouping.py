"""Group commit: the store operations of concurrent handlers share one transaction.

A consumer runs up to ``prefetch`` handlers at once. Each submits its store operation and
awaits its own result; one runner takes everything submitted so far, runs it in ONE context
(a transaction), operation kind by kind (so a kind can answer many callers with one
statement), leaves the context (commits) and only then answers the callers. A handler
therefore acks only after its write is durable, as when it wrote alone. While a batch runs
the next one gathers: at low load every call runs at once, under load batches grow.
If a batch fails, every caller in it sees the error (and retries: handlers are idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

# Answers many items of one kind inside the shared context: one result per item, in order.
BatchOp = Callable[[C, Sequence[T]], Awaitable[Sequence[R]]]


class GroupRunner(Generic[C]):
    """Runs the operations submitted while the previous batch ran, together."""

    def __init__(
        self,
        context: Callable[[], AbstractAsyncContextManager[C]],
        *,
        max_batch: int = 500,
    ) -> None:
        self._context = context
        self._max_batch = max_batch
        self._queue: list[tuple[BatchOp[C, Any, Any], Any, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, op: BatchOp[C, T, R], item: T) -> R:
        """Run ``op`` for ``item`` in the next batch; its result once that batch committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((op, item, future))
        if self._runner is None:
            self._runner = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let the handlers woken in this loop turn join
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._run(batch)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            for _, _, future in self._queue:
                if not future.done():
                    future.set_exception(exc)
            self._queue.clear()
            raise
        finally:
            self._runner = None

    async def _run(
        self, batch: list[tuple[BatchOp[C, Any, Any], Any, asyncio.Future[Any]]]
    ) -> None:
        by_op: dict[BatchOp[C, Any, Any], list[int]] = {}
        for index, (op, _, _) in enumerate(batch):
            by_op.setdefault(op, []).append(index)
        results: list[Any] = [None] * len(batch)
        try:
            async with self._context() as context:
                for op, indexes in by_op.items():
                    answers = await op(context, [batch[i][1] for i in indexes])
                    for index, answer in zip(indexes, answers, strict=True):
                        results[index] = answer
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
