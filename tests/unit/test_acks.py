"""The bus's ack batcher: draining it returns, whatever moment a flush is at."""

from __future__ import annotations

import asyncio

import pytest

from dlaas.bus.connection import Acks


@pytest.mark.timeout(10)
async def test_drain_returns_when_a_flush_finished_but_its_callback_has_not_run() -> None:
    acks = Acks()
    acks._start_flush()  # nothing to ack: the flush ends in its first step
    await asyncio.sleep(0)  # it ran in this loop turn; its done callback runs in the next
    flush = acks._flushing
    assert flush is not None
    assert flush.done()
    await acks.drain()  # awaiting a finished task yields nothing: this spun forever
    assert acks._flushing is None
