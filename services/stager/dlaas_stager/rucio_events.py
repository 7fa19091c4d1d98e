"""Rucio's own events (hermes): transfers and rules become per-file readiness."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

import structlog

from dlaas.bus.consumer import Delivery
from dlaas.contracts.hermes import RuleOk, TransferFinished
from dlaas.errors import TransientError
from dlaas.logging import bound
from dlaas_stager.batching import ReplicaBatcher
from dlaas_stager.instances import Instances
from dlaas_stager.ports import Catalog, Replica
from dlaas_stager.staging import Announcer
from dlaas_stager.store import Store, WaitingFile

log = structlog.get_logger(__name__)

RECHECKING = 10  # transfer-done handlers waiting to ask Rucio again, at most


@dataclass(frozen=True)
class RucioEvents:
    """Handlers of the hermes queue. Any order, any repetition: they only move files forward."""

    instances: Instances
    store: Store
    announcer: Announcer
    recheck_s: tuple[float, ...] = ()  # waits before asking again for a replica
    # handlers waiting to ask again, at most RECHECKING: each holds a prefetch slot, and
    # rule_ok and the other files' events must keep flowing past them
    _rechecks: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(RECHECKING), init=False
    )

    def _instance(self, delivery: Delivery) -> str | None:
        """The instance whose hermes sent this (its routing key); None: not one of ours."""
        name = delivery.routing_key or ""
        if self.instances.knows(name):
            return name
        self.instances.tell_unknown(name)
        return None

    async def on_transfer_done(
        self, payload: TransferFinished, delivery: Delivery
    ) -> None:
        """A transfer finished: stage the file once Rucio has its replica AVAILABLE."""
        did = f"{payload.scope}:{payload.name}"
        instance = self._instance(delivery)
        if instance is None:
            return
        with bound(did=did, rse=payload.dst_rse):
            waiting = await self.store.waiting_for_file(
                did, payload.dst_rse, instance, claimed=_again(delivery)
            )
            if not waiting:
                return  # not ours, already staged, or not recorded yet (checked after rules)
            batcher = self.instances.batcher(instance)
            replica = await batcher.replica(did, payload.dst_rse)
            if (replica is None or not replica.available) and not self._rechecks.locked():
                async with self._rechecks:  # a free slot, taken at once
                    replica = await self._recheck(batcher, did, payload.dst_rse)
            if replica is not None and replica.available:
                await self.announcer.stage(waiting, {did: replica})
                return
            # the poller reports done before the finisher marks the replica AVAILABLE
            if not delivery.last_attempt:
                raise TransientError(
                    f"replica of {did} not yet AVAILABLE at {payload.dst_rse}"
                )
            log.info("left_to_rule_ok", reason="replica still not AVAILABLE")

    async def _recheck(
        self, batcher: ReplicaBatcher, did: str, rse: str
    ) -> Replica | None:
        """Ask again after each wait of ``recheck_s`` until the replica is AVAILABLE."""
        replica = None
        for wait in self.recheck_s:  # Rucio's finisher is often seconds behind
            await asyncio.sleep(wait)
            replica = await batcher.replica(did, rse)
            if replica is not None and replica.available:
                break
        return replica

    async def on_transfer_failed(
        self, payload: TransferFinished, delivery: Delivery
    ) -> None:
        """Rucio retries failed transfers itself; keep the reason to tell if it goes STUCK."""
        did = f"{payload.scope}:{payload.name}"
        instance = self._instance(delivery)
        if instance is None:
            return
        reason = payload.reason or "transfer failed (Rucio gave no reason)"
        await self.store.record_reason(did, payload.dst_rse, reason, instance)
        log.warning("transfer_failed", did=did, rse=payload.dst_rse, reason=reason)

    async def on_rule_ok(self, payload: RuleOk, delivery: Delivery) -> None:
        """A rule (or its dataset lock) is OK: stage every file it still owes."""
        instance = self._instance(delivery)
        if instance is None:
            return
        with bound(rule_id=payload.rule_id):
            catalog = self.instances.catalog(instance)
            await stage_rule(
                payload.rule_id,
                self.store,
                catalog,
                self.announcer,
                claimed=_again(delivery),
            )


def _again(delivery: Delivery) -> bool:
    """A message seen before (redelivered, or retried): its claims may be unannounced."""
    return delivery.redelivered or delivery.attempt > 1


async def stage_rule(
    rule_id: str,
    store: Store,
    catalog: Catalog,
    announcer: Announcer,
    *,
    claimed: bool = False,
) -> int:
    """Stage the waiting files of a rule that Rucio has AVAILABLE (one call per RSE)."""
    by_rse: dict[str, list[WaitingFile]] = defaultdict(list)
    for file in await store.waiting_for_rule(rule_id, claimed=claimed):
        by_rse[file.rse].append(file)
    staged = 0
    for rse, files in by_rse.items():
        dids = sorted({f.did for f in files})
        staged += await announcer.stage(files, await catalog.replicas_at(dids, rse))
    return staged
