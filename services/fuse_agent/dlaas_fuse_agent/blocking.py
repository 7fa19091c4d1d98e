"""Blocking filesystem calls off the event loop, abandoned after a timeout.

A call into a hung FUSE mount cannot be cancelled, only abandoned. Calls run on daemon
worker threads that are kept between calls (starting a thread per call cost more than the
call): a worker stuck in a hung mount is simply never idle again, and the next call that
finds no idle worker starts a new one, so stuck calls never starve the others nor keep the
process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _result(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # done: abandoned after the timeout
        future.set_result(value)


def _error(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _Workers:
    """Daemon threads taking jobs from one queue; a new one whenever none is idle."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Callable[[], None], name: str) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # taken by the job just queued
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, daemon=True, name=name).start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


_WORKERS = _Workers()


async def call(fn: Callable[[], T], timeout_s: float, name: str = "fs-call") -> T:
    """Run ``fn`` on a daemon worker thread; TimeoutError after ``timeout_s``."""
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

    _WORKERS.submit(work, name)
    return await asyncio.wait_for(future, timeout_s)


_Done = tuple["asyncio.Future[Any]", bool, Any]  # future, succeeded, value or error


def _settle_all(done: list[_Done]) -> None:
    for future, ok, value in done:
        (_result if ok else _error)(future, value)


class Grouped:
    """Blocking calls made in the same loop turn run one after the other in ONE worker job.

    A thread hop per call (queue, wake-up, result handed back) cost more than a check of a
    file on a mount; under load many files are ready at once, so they share a hop. Results
    go back as they are ready at most every ``flush_s`` (one wake-up of the loop for many),
    so a call stuck in a hung mount delays only the calls queued behind it in its own job;
    those time out like it and are retried, and the next turn's calls get a job (and, if
    need be, a thread) of their own.
    """

    def __init__(self, *, flush_s: float = 0.02) -> None:
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._flush_s = flush_s

    async def call(
        self, fn: Callable[[], T], timeout_s: float, name: str = "fs-call"
    ) -> T:
        """Run ``fn`` in the next job; TimeoutError after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._dispatch, loop, name)
        self._pending.append((fn, future))
        return await asyncio.wait_for(future, timeout_s)

    def _dispatch(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        jobs, self._pending = self._pending, []
        flush_s = self._flush_s

        def work() -> None:
            done: list[_Done] = []
            last = time.monotonic()
            for fn, future in jobs:
                try:
                    done.append((future, True, fn()))
                except BaseException as exc:  # handed to the awaiting coroutine
                    done.append((future, False, exc))
                if time.monotonic() - last >= flush_s:
                    _hand_back(loop, done)
                    done, last = [], time.monotonic()
            _hand_back(loop, done)

        _WORKERS.submit(work, name)


def _hand_back(loop: asyncio.AbstractEventLoop, done: list[_Done]) -> None:
    if done:
        with contextlib.suppress(RuntimeError):  # the loop closed while we were stuck
            loop.call_soon_threadsafe(_settle_all, done)
