"""The stager's request handlers: stage, cancel, and the files' final states."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Delivery
from dlaas.contracts import (
    CancelRequested,
    FileFailed,
    FileVisible,
    PublishRequested,
    RequestAccepted,
    RequestCancelled,
    RequestFailed,
    RuleRequested,
)
from dlaas.errors import PermanentError
from dlaas.logging import bound
from dlaas_stager import domain, status
from dlaas_stager.instances import Instances
from dlaas_stager.ports import Catalog, FileInfo, RuleSpec
from dlaas_stager.settings import StagerOptions
from dlaas_stager.staging import Announcer
from dlaas_stager.store import FAILED, PUBLISH, VISIBLE, NewRequest, Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Stager:
    """Handlers with their dependencies (the composition root builds one)."""

    bus: Bus
    instances: Instances
    store: Store
    announcer: Announcer
    options: StagerOptions

    async def on_rule_requested(self, event: RuleRequested, delivery: Delivery) -> None:
        """Create the rules, record the files, report what is already there."""
        with bound(request_id=str(event.request_id), user=event.user, rse=event.rse):
            domain.check_user(event, delivery.user_id)
            if event.dry_run:
                await self._dry_run(event, delivery.correlation_id)
                return
            known = await self.store.summary(str(event.request_id))
            if known is not None and known.state != "accepted":
                return  # a repeat of a request already cancelled, failed or completed
            try:
                again = delivery.redelivered or delivery.attempt > 1
                await self._accept(event, delivery.correlation_id, again=again)
            except PermanentError as exc:
                log.warning("request_refused", reason=str(exc))
                failed = RequestFailed(
                    request_id=event.request_id, user=event.user, reason=str(exc)
                )
                await self.bus.publish(failed, correlation_id=delivery.correlation_id)

    async def _dry_run(self, event: RuleRequested, correlation_id: str | None) -> None:
        try:
            catalog = self.instances.catalog(event.instance)
        except PermanentError as exc:
            failed = RequestFailed(
                request_id=event.request_id, user=event.user, reason=str(exc)
            )
            await self.bus.publish(failed, correlation_id=correlation_id)
            return
        report = await status.plan(catalog, event)
        key = topology.status_routing_key(event.user, str(event.request_id))
        await self.bus.publish(report, exchange=topology.NOTIFY, routing_key=key,
                               correlation_id=correlation_id)  # fmt: skip

    async def _resolve(
        self, catalog: Catalog, dids: list[str]
    ) -> tuple[list[FileInfo], dict[str, str]]:
        """Files of the DIDs Rucio knows, and the reason for each DID it refused."""
        files: dict[str, list[FileInfo]] = {}
        refused: dict[str, str] = {}
        for did in dids:
            try:
                files |= await catalog.list_files([did])
            except PermanentError as exc:
                refused[did] = str(exc)
        if not files:
            raise PermanentError("; ".join(refused.values()))
        return domain.unique_files(files), refused

    async def _accept(
        self, event: RuleRequested, correlation_id: str | None, *, again: bool = False
    ) -> None:
        requested = list(dict.fromkeys(event.dids))  # each DID once, in the user's order
        instance = self.instances.name_of(event.instance)
        catalog = self.instances.catalog(instance)  # PermanentError: unknown instance
        files, refused = await self._resolve(catalog, requested)
        dids = [d for d in requested if d not in refused]
        spec = RuleSpec(
            dids=dids,
            rse=event.rse,
            account=domain.account_for(event.user, self.options),
            lifetime_s=domain.lifetime_seconds(event.lifetime_days, self.options),
            activity=domain.activity(event.activity, self.options),
            grouping=self.options.grouping,
        )
        rule_ids = await catalog.add_rules(spec)
        request_id = str(event.request_id)
        await self.store.save_request(NewRequest(
            request_id, event.user, spec.account, event.rse, correlation_id, files, rule_ids,
            refused, node=event.node, instance=instance,
        ))  # fmt: skip
        replicas = await catalog.replicas_at(dids, event.rse)
        available = sum(
            1 for f in files if f.did in replicas and replicas[f.did].available
        )
        accepted = RequestAccepted(
            request_id=event.request_id, user=event.user, rse=event.rse,
            files_total=len(files) + len(refused), bytes_total=sum(f.bytes for f in files),
            files_available=available, files_failed=len(refused), rule_ids=rule_ids,
        )  # fmt: skip
        await self.bus.publish(accepted, correlation_id=correlation_id)
        log.info(
            "request_accepted", files=len(files), refused=len(refused), rule_ids=rule_ids
        )
        for did, reason in refused.items():
            failed = FileFailed(request_id=event.request_id, user=event.user, did=did,
                                reason=reason, stage="rucio")  # fmt: skip
            await self.bus.publish(failed, correlation_id=correlation_id)
        if available or again:  # (seen before: claimed files may be unannounced)
            await self.announcer.stage(
                await self.store.waiting_in_request(request_id, claimed=again), replicas
            )
        await self.announcer.check_complete(request_id)

    async def on_publish_requested(
        self, event: PublishRequested, delivery: Delivery
    ) -> None:
        """Register a notebook's output where it is, replicate it to long-term storage."""
        with bound(request_id=str(event.request_id), user=event.user, did=event.did):
            domain.check_user(event, delivery.user_id)
            try:
                await self._publish(event, delivery.correlation_id)
            except PermanentError as exc:
                log.warning("publish_refused", reason=str(exc))
                failed = RequestFailed(request_id=event.request_id, user=event.user,
                                       reason=domain.explain(str(exc)))  # fmt: skip
                await self.bus.publish(failed, correlation_id=delivery.correlation_id)

    async def _publish(self, event: PublishRequested, correlation_id: str | None) -> None:
        account = domain.account_for(event.user, self.options)
        info = FileInfo(event.did, event.bytes, event.adler32)
        instance = self.instances.name_of(event.instance)
        catalog = self.instances.catalog(instance)
        await catalog.register_replica(event.rse, info, event.pfn)
        days = event.lifetime_days
        spec = RuleSpec(
            dids=[event.did], rse=event.to_rse, account=account,
            lifetime_s=None if days is None else domain.lifetime_seconds(days, self.options),
            activity=self.options.activity, grouping=self.options.grouping,
        )  # fmt: skip
        rule_ids = await catalog.add_rules(spec)
        request_id = str(event.request_id)
        await self.store.save_request(NewRequest(
            request_id, event.user, account, event.to_rse, correlation_id, [info], rule_ids,
            {}, kind=PUBLISH, instance=instance,
        ))  # fmt: skip
        log.info("publish_accepted", rule_ids=rule_ids, to_rse=event.to_rse)
        replicas = await catalog.replicas_at([event.did], event.to_rse)
        await self.announcer.stage(
            await self.store.waiting_in_request(request_id), replicas
        )
        await self.announcer.check_complete(request_id)

    async def on_cancel_requested(
        self, event: CancelRequested, delivery: Delivery
    ) -> None:
        """Stop a request; remove its rules unless another request needs them."""
        with bound(request_id=str(event.request_id), user=event.user):
            domain.check_user(event, delivery.user_id)
            request_id = str(event.request_id)
            if await self.store.owner(request_id) != event.user:
                raise PermanentError(f"{event.user} has no request {request_id}")
            await self.store.cancel(request_id)
            catalog = self.instances.catalog(await self.store.instance_of(request_id))
            removed, kept = [], []
            for rule_id in await self.store.rules_of(request_id):
                if await self.store.rule_needed_elsewhere(rule_id, request_id):
                    kept.append(rule_id)
                else:
                    try:
                        await catalog.delete_rule(rule_id)
                    except PermanentError as exc:  # e.g. no admin attribute at Rucio
                        log.warning("rule_not_removed", rule_id=rule_id, reason=str(exc))
                        kept.append(rule_id)
                        continue
                    removed.append(rule_id)
            cancelled = RequestCancelled(request_id=event.request_id, user=event.user,
                                         rules_removed=removed, rules_kept=kept)  # fmt: skip
            await self.bus.publish(cancelled, correlation_id=delivery.correlation_id)
            log.info("request_cancelled", rules_removed=removed, rules_kept=kept)

    async def on_file_visible(self, event: FileVisible, _: Delivery) -> None:
        """The user can open the file: count it towards completion."""
        where = (event.path, event.pfn, event.cache_url)
        request_id = str(event.request_id)
        # not lazy: the status report reads this row, and the user was just told the file
        # is ready (bench/RESULTS.md, round 4)
        await self.store.set_file_state(request_id, event.did, VISIBLE, where=where)
        # after the commit, in a transaction of its own: of two replicas settling a
        # request's last files at once, the later one sees both (one transaction for the
        # move and the check would let each miss the other's uncommitted move); a read
        # nobody waits for, it rides with the store's next batch
        await self.announcer.check_complete(request_id, lazy=True)

    async def on_file_failed(self, event: FileFailed, _: Delivery) -> None:
        """The file cannot be made available: count it towards completion."""
        request_id = str(event.request_id)
        await self.store.set_file_state(
            request_id, event.did, FAILED, reason=event.reason
        )
        await self.announcer.check_complete(request_id)
