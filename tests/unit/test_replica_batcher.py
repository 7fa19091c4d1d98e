"""The stager's replica batcher: a burst of questions costs a call or two, a lone one waits
for nobody, and a failure reaches every question of its call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dlaas.errors import TransientError
from dlaas_stager.batching import ReplicaBatcher
from dlaas_stager.ports import Replica
from tests.fakes.catalog import FakeCatalog


def _catalog(n: int) -> FakeCatalog:
    catalog = FakeCatalog()
    for info in catalog.add_dataset("user.alice:ds", n):
        catalog.make_available(info.did, "NOTEBOOK")
    return catalog


async def test_a_burst_is_asked_in_one_call_and_a_lone_question_at_once() -> None:
    catalog = _catalog(30)
    batcher = ReplicaBatcher(catalog, window_s=60)  # a window would hang the test
    answers = await asyncio.gather(
        *(batcher.replica(f"user.alice:ds.f{i}", "NOTEBOOK") for i in range(30)),
        batcher.replica("user.alice:ds.f0", "ELSEWHERE"),
    )
    assert [a.did if a else None for a in answers] == [
        *(f"user.alice:ds.f{i}" for i in range(30)),
        None,
    ]
    assert catalog.calls == ["list_replicas"] * 2  # one per RSE
    alone = await asyncio.wait_for(batcher.replica("user.alice:ds.f1", "NOTEBOOK"), 5)
    assert alone is not None


async def test_questions_gather_behind_a_call_in_flight() -> None:
    catalog = _catalog(10)
    batcher = ReplicaBatcher(catalog, window_s=60)
    first = asyncio.ensure_future(batcher.replica("user.alice:ds.f0", "NOTEBOOK"))
    await asyncio.sleep(0)  # the first call is in flight (the fake answers next turn)
    rest = [batcher.replica(f"user.alice:ds.f{i}", "NOTEBOOK") for i in range(1, 10)]
    assert all(await asyncio.gather(first, *rest))
    assert len(catalog.calls) <= 2


class DownOnce(FakeCatalog):
    """Rucio down for the first replica listing."""

    async def replicas_at(self, dids: Sequence[str], rse: str) -> dict[str, Replica]:
        if not self.calls:
            self.calls.append("list_replicas")
            raise TransientError("Rucio list_replicas: ConnectionError: refused")
        return await super().replicas_at(dids, rse)


async def test_a_failed_call_fails_its_questions_only() -> None:
    catalog = DownOnce()
    for info in catalog.add_dataset("user.alice:ds", 3):
        catalog.make_available(info.did, "NOTEBOOK")
    batcher = ReplicaBatcher(catalog, window_s=60)
    failed = await asyncio.gather(
        batcher.replica("user.alice:ds.f0", "NOTEBOOK"),
        batcher.replica("user.alice:ds.f1", "NOTEBOOK"),
        return_exceptions=True,
    )
    assert all(isinstance(f, TransientError) for f in failed)
    assert await batcher.replica("user.alice:ds.f1", "NOTEBOOK") is not None
