"""Blocking filesystem calls off the event loop, abandoned after a timeout.

A call into a hung FUSE mount cannot be cancelled, only abandoned: each runs in a daemon
thread of its own, so stuck calls never fill a shared pool nor keep the process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _result(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # done: abandoned after the timeout
        future.set_result(value)


def _error(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def call(fn: Callable[[], T], timeout_s: float, name: str = "fs-call") -> T:
    """Run ``fn`` in a daemon thread; TimeoutError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        settle: Callable[[], None]
        try:
            settle = functools.partial(_result, future, fn())
        except BaseException as exc:  # handed to the awaiting coroutine
            settle = functools.partial(_error, future, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed while we were stuck
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=work, daemon=True, name=name).start()
    return await asyncio.wait_for(future, timeout_s)
