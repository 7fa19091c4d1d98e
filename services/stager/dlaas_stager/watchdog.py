"""Rucio says nothing when a rule goes STUCK or SUSPENDED: look, now and then.

Every ``interval_s`` the watchdog asks Rucio about the rules of requests older than
``after_s`` that still owe files: files of a STUCK lock fail with the last transfer error
Rucio reported (or the rule's error); a rule that is OK stages what it owes (a lost or late
``rule_ok`` costs a delay, never a request); a removed rule fails its files.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from dlaas.background import Background
from dlaas.errors import DlaasError, PermanentError
from dlaas.logging import bound
from dlaas_stager import domain
from dlaas_stager.instances import Instances
from dlaas_stager.ports import Catalog
from dlaas_stager.rucio_events import stage_rule
from dlaas_stager.staging import Announcer
from dlaas_stager.store import Store

log = structlog.get_logger(__name__)

_GIVEN_UP = ("STUCK", "SUSPENDED")


@dataclass
class Watchdog:
    """Periodic re-check of rules that owe files."""

    instances: Instances
    store: Store
    announcer: Announcer
    interval_s: float
    after_s: float
    _task: Background = field(default_factory=Background, init=False)

    def start(self) -> None:
        """Run in the background until :meth:`stop`."""
        self._task.start(self._loop, "stager-watchdog")

    async def stop(self) -> None:
        """Stop the loop."""
        await self._task.stop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except DlaasError as exc:  # Rucio down: try again next round
                log.warning("watchdog_sweep_failed", reason=str(exc))

    async def sweep(self) -> None:
        """One pass over the rules that still owe files."""
        rules = await self.store.rules_waiting_since(time.time() - self.after_s)
        for rule_id, instance in rules:
            with bound(rule_id=rule_id, instance=instance):
                await self._check(rule_id, self.instances.catalog(instance))

    async def _check(self, rule_id: str, catalog: Catalog) -> None:
        try:
            rule = await catalog.rule_state(rule_id)
        except PermanentError:
            await self._fail_all(rule_id, "the replication rule was removed from Rucio")
            return
        if rule.state == "OK":
            await stage_rule(rule_id, self.store, catalog, self.announcer)
        elif rule.state in _GIVEN_UP:
            stuck = set(await catalog.stuck_files(rule_id))
            for file in await self.store.waiting_for_rule(rule_id):
                if rule.state == "SUSPENDED" or file.did in stuck:
                    reasons = await self.store.reasons(file.request_id)
                    why = (
                        reasons.get(file.did) or rule.error or "no reason given by Rucio"
                    )
                    await self.announcer.fail(
                        file, f"rule {rule.state}: {domain.explain(why)}"
                    )

    async def _fail_all(self, rule_id: str, reason: str) -> None:
        for file in await self.store.waiting_for_rule(rule_id):
            await self.announcer.fail(file, reason)
