"""Act once a write is committed, ack once it is on disk.

A store may commit without waiting for the disk (SQLite's WAL with ``synchronous=NORMAL``:
the commit is visible to every connection and survives the process, not yet a power loss)
and make it durable later, many commits in one ``fsync``. What a handler does after such a
commit (publish, tell the user) may then go on at once; only the message's ack must wait
until the write is on disk, or a power loss could lose a write whose message is gone.

The consumer opens :func:`deferred` around a handler and awaits :func:`settle` before the
ack; a store calls :func:`defer` with what makes its commits durable. Outside a consumer
(a test, a CLI, an HTTP handler) nothing is collected and the store waits at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

Sync = Callable[[], Awaitable[None]]


class Syncs(list[Sync]):
    """What one handler's writes need to reach the disk; closed once the handler returned."""

    closed = False


_DEFERRED: ContextVar[Syncs | None] = ContextVar("dlaas_deferred", default=None)


@contextlib.contextmanager
def deferred() -> Iterator[Syncs]:
    """Collect, for the block (one handler), what its writes need to reach the disk.

    A task the handler started inherits the collection; once the block is over, what such
    a task writes is no longer collected (nobody would await it) but waited for at once.
    """
    syncs = Syncs()
    token = _DEFERRED.set(syncs)
    try:
        yield syncs
    finally:
        syncs.closed = True
        _DEFERRED.reset(token)


def defer(sync: Sync) -> bool:
    """Leave ``sync`` to the handler's ack; False when no handler collects (await it now)."""
    syncs = _DEFERRED.get()
    if syncs is None or syncs.closed:
        return False
    syncs.append(sync)
    return True


async def settle(syncs: Syncs) -> None:
    """Wait until what the handler wrote is on disk (before its ack)."""
    for sync in syncs:
        await sync()
