"""Group commit: the store operations of concurrent handlers share one transaction.

A consumer runs up to ``prefetch`` handlers at once. Each submits its store operation and
awaits its own result; one runner takes everything submitted so far and runs it as ONE
unit of work in ONE transaction, operation kind by kind (so a kind answers many callers
with one statement), and only once that transaction committed answers the callers. A
handler therefore acks only after its write is durable, as when it wrote alone. While a
batch runs the next one gathers: at low load every call runs at once, under load batches
grow. If a batch fails, every caller in it sees the error (and retries: handlers are
idempotent).

A write nobody waits for to go on (only the handler's ack: the notifier's "told") may be
submitted ``lazy``: it rides in the next batch that writes anyway for a caller who does wait,
or after ``linger_s`` if none comes. One commit then serves both, the commits that do hold a
user's next step up are not queued behind commits that hold nothing up, and a batch of reads
(``writes=False``: a look-up on the hot path) never waits for a commit it did not need.

The operations are plain functions of a connection (``C``): the store decides how a unit
of work reaches its database (on the event loop for a local SQLite file, through the async
driver otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

# Answers many items of one kind inside the batch's transaction: one result per item.
BatchOp = Callable[[C, Sequence[T]], Sequence[R]]
# Runs a unit of work in one transaction (committed when it returns) and returns its result.
Transaction = Callable[[Callable[[C], list[Any]]], Awaitable[list[Any]]]

# an operation, its item, its caller's future, and whether it writes
_Entry = tuple[BatchOp[Any, Any, Any], Any, "asyncio.Future[Any]", bool]


class GroupRunner(Generic[C]):
    """Runs the operations submitted while the previous batch ran, together."""

    def __init__(
        self,
        transaction: Transaction[C],
        *,
        max_batch: int = 500,
        linger_s: float = 0.05,
        durable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._transaction = transaction
        # a store whose commits reach the disk later: called after each write, in the
        # caller's context (the handler's ack waits for it; see dlaas.durability)
        self._durable = durable
        self._max_batch = max_batch
        self._linger_s = linger_s  # the longest a lazy operation waits for company
        self._queue: list[_Entry] = []
        self._lazy: list[_Entry] = []
        self._runner: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def submit(
        self,
        op: BatchOp[C, T, R],
        item: T,
        *,
        lazy: bool = False,
        writes: bool = True,
    ) -> R:
        """Run ``op`` for ``item`` in the next batch; its result once that batch committed.

        ``writes=False``: ``op`` only reads. ``lazy``: in the next batch that runs anyway
        (a lazy write: that writes anyway), or after ``linger_s``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if lazy:
            self._lazy.append((op, item, future, writes))
            if self._timer is None:
                self._timer = loop.call_later(self._linger_s, self._linger_over, loop)
        else:
            self._queue.append((op, item, future, writes))
            if self._runner is None:
                self._runner = loop.create_task(self._drain())
        result = await future
        if writes and self._durable is not None:
            await self._durable()
        return result

    def _linger_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._queue += self._lazy  # waited long enough: due like the others
        self._lazy.clear()
        if self._runner is None and self._queue:
            self._runner = loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let the handlers woken in this loop turn join
            while self._queue:
                batch = self._riders()
                room = self._max_batch - len(batch)
                batch += self._queue[:room]
                del self._queue[:room]
                await self._run(batch)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            _fail(self._queue + self._lazy, exc)
            self._queue.clear()
            self._lazy.clear()
            raise
        finally:
            self._runner = None

    def _riders(self) -> list[_Entry]:
        """The lazy operations that join the next batch: reads always, writes if it writes."""
        commits = any(writes for *_, writes in self._queue[: self._max_batch])
        riders: list[_Entry] = []
        staying: list[_Entry] = []
        for entry in self._lazy:
            joins = (commits or not entry[3]) and len(riders) < self._max_batch
            (riders if joins else staying).append(entry)
        self._lazy = staying
        if not staying and self._timer is not None:
            self._timer.cancel()  # all taken: the next lazy one waits its own
            self._timer = None
        return riders

    async def _run(self, batch: list[_Entry]) -> None:
        by_op: dict[BatchOp[Any, Any, Any], list[int]] = {}
        for index, (op, *_) in enumerate(batch):
            by_op.setdefault(op, []).append(index)

        def work(context: C) -> list[Any]:
            results: list[Any] = [None] * len(batch)
            for op, indexes in by_op.items():
                answers = op(context, [batch[i][1] for i in indexes])
                for index, answer in zip(indexes, answers, strict=True):
                    results[index] = answer
            return results

        try:
            results = await self._transaction(work)
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(batch: list[_Entry], exc: BaseException) -> None:
    for _, _, future, _ in batch:
        if not future.done():
            future.set_exception(exc)
