"""The stager against the real Rucio of the local stack (server, conveyor, hermes over STOMP).

The four services run in this process (the fake is gone: the stager talks to Rucio), so a
test can hold a queue back or count Rucio calls; the end-to-end tests run them as processes.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bench.stager_rucio import stage_once
from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.client.api import StageResult, acancel, apublish, astage, checksum
from dlaas.contracts import Notification, RuleRequested
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import (
    NOTEBOOK,
    ORIGIN,
    SCRATCH,
    build_lake,
    make_dataset,
    register_dataset,
    rse_dir,
)
from dlaas_devstack.rucio import RucioStack
from dlaas_stager.adapters.rucio import RucioCatalog
from dlaas_stager.settings import RucioSettings
from tests.services import Stack, running_services

pytestmark = [pytest.mark.rucio, pytest.mark.timeout(300)]


def _bus(url: str) -> BusSettings:
    return BusSettings.model_validate({"url": url})


def _catalog(stack: RucioStack, **settings: object) -> RucioCatalog:
    return RucioCatalog(RucioSettings.model_validate({
        "host": stack.rucio_host, "username": "ddmlab", "password": "secret",
        "account": "root", **settings}))  # fmt: skip


def _name(prefix: str = "ds") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def services(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> AsyncIterator[tuple[Stack, RucioCatalog]]:
    catalog = _catalog(rucio_stack)
    mount = rse_dir(rucio_stack, NOTEBOOK)
    async with running_services(
        broker.url(), tmp_path, catalog, mount=mount, retry_delays=(1.0, 2.0, 4.0)
    ) as stack:
        yield stack, catalog


async def _stage(broker: Vhost, user: str, *dids: str, wait: bool = True) -> StageResult:
    return await astage(list(dids), rse=NOTEBOOK, timeout=120, wait=wait,
                        settings=_bus(broker.url(user)))  # fmt: skip


def _rules(stack: RucioStack, scope: str, name: str) -> list[dict[str, Any]]:
    return [r for r in stack.client().list_did_rules(scope, name)
            if r["rse_expression"] == NOTEBOOK]  # fmt: skip


async def test_files_datasets_and_containers_in_one_request_take_few_rucio_calls(
    broker: Vhost, rucio_stack: RucioStack, services: tuple[Stack, RucioCatalog]
) -> None:
    _, catalog = services
    inner, other, loose, container = _name(), _name(), _name(), _name("cnt")
    make_dataset(rucio_stack, "user.alice", inner, 3)
    make_dataset(rucio_stack, "user.alice", other, 2)
    single = make_dataset(rucio_stack, "user.alice", loose, 2)[0]
    client = rucio_stack.client()
    client.add_container("user.alice", container)
    client.attach_dids("user.alice", container, [{"scope": "user.alice", "name": inner}])
    plan = await astage([f"user.alice:{container}", f"user.alice:{single.name}"], rse=NOTEBOOK,
                        dry_run=True, timeout=60, settings=_bus(broker.url("alice")))  # fmt: skip
    assert [(e.kind, e.files) for e in plan.plan] == [("CONTAINER", 3), ("FILE", 1)]
    assert _rules(rucio_stack, "user.alice", container) == []  # a dry run creates nothing
    before = catalog.calls_by.copy()
    result = await _stage(broker, "alice", f"user.alice:{container}", f"user.alice:{other}",
                          f"user.alice:{single.name}", f"user.alice:{other}")  # fmt: skip
    calls = catalog.calls_by - before
    print(f"\n[rucio calls] {dict(calls)} for {len(result.ready)} files")
    assert result.ok, result
    assert len(result.ready) == 6
    # one list_files per distinct DID, one add-rule, one list_replicas, then a few batched
    # checks after transfer-done and rule_ok: not one call per file
    assert calls["add_replication_rule"] == 1
    assert calls["list_files"] == 3
    assert calls.total() <= 15


async def _listen(url: str, user: str, request_id: uuid.UUID) -> tuple[Any, Any]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.NOTIFY, topology.notify_routing_key(user, str(request_id)))
    return connection, queue


def _notes(message: Any) -> list[Notification]:
    """The notifications of one message (those told together share one)."""
    return [Notification.model_validate_json(b) for _, b in batch.unbatch(message)]


async def _notes_until_completed(queue: Any, timeout: float = 120) -> list[Notification]:
    notes: list[Notification] = []
    async with asyncio.timeout(timeout), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                notes += _notes(message)
            if {n.kind for n in notes} & {"completed", "failed"}:
                await asyncio.sleep(1)  # anything repeated would arrive now
                while (extra := await queue.get(fail=False)) is not None:
                    await extra.ack()
                    notes += _notes(extra)
                return notes
    return notes


async def test_the_same_request_delivered_twice_makes_one_rule_and_one_story(
    broker: Vhost, rucio_stack: RucioStack, services: tuple[Stack, RucioCatalog]
) -> None:
    name = _name()
    make_dataset(rucio_stack, "user.alice", name, 3)
    request = RuleRequested(request_id=uuid.uuid4(), user="alice",
                            dids=[f"user.alice:{name}"], rse=NOTEBOOK)  # fmt: skip
    connection, queue = await _listen(broker.url("alice"), "alice", request.request_id)
    bus = await Bus(_bus(broker.url("alice")), name="test").connect()
    for _ in range(2):
        await bus.publish(
            request, correlation_id=str(request.request_id), user_id="alice"
        )
    await bus.close()
    notes = await _notes_until_completed(queue)
    await connection.close()
    kinds = [n.kind for n in notes]
    assert kinds.count("completed") == 1, kinds
    assert sorted(str(n.did) for n in notes if n.kind == "file-ready") == sorted(
        f"user.alice:{name}.f{i}.dat" for i in range(3)
    )
    assert len(_rules(rucio_stack, "user.alice", name)) == 1


async def test_an_existing_rule_is_reused_and_two_users_share_the_data(
    broker: Vhost, rucio_stack: RucioStack, services: tuple[Stack, RucioCatalog]
) -> None:
    name = _name()
    make_dataset(rucio_stack, "user.alice", name, 2)
    did = {"scope": "user.alice", "name": name}
    (existing,) = rucio_stack.client().add_replication_rule(
        [did], 1, NOTEBOOK, account="alice", grouping="DATASET")  # fmt: skip
    alice, bob = await asyncio.gather(
        _stage(broker, "alice", f"user.alice:{name}"),
        _stage(broker, "bob", f"user.alice:{name}"),
    )
    assert alice.ok, alice
    assert bob.ok, bob
    assert alice.paths != bob.paths  # each user sees the files in their own view
    rules = _rules(rucio_stack, "user.alice", name)
    assert sorted(r["account"] for r in rules) == ["alice", "bob"]
    assert existing in {r["id"] for r in rules}


async def test_cancel_removes_a_rule_only_when_no_other_request_needs_it(
    broker: Vhost, rucio_stack: RucioStack, services: tuple[Stack, RucioCatalog]
) -> None:
    name = _name()
    make_dataset(rucio_stack, "user.alice", name, 2)
    first = await _stage(broker, "alice", f"user.alice:{name}")
    second = await _stage(broker, "alice", f"user.alice:{name}")
    (rule,) = _rules(rucio_stack, "user.alice", name)
    settings = _bus(broker.url("alice"))
    kept = await acancel(first.request_id, settings=settings)
    assert kept.reason is not None
    assert "0 rules removed, 1 kept" in kept.reason
    assert _rules(rucio_stack, "user.alice", name) == [rule] or _rules(
        rucio_stack, "user.alice", name)[0]["id"] == rule["id"]  # fmt: skip
    removed = await acancel(second.request_id, settings=settings)
    assert removed.reason is not None
    assert "1 rules removed" in removed.reason
    # Rucio deletes a rule by making it expire within the hour (not the 7 days it had);
    # its judge-cleaner removes it then
    (expired,) = _rules(rucio_stack, "user.alice", name)
    assert expired["expires_at"] < datetime.now(UTC).replace(tzinfo=None) + timedelta(
        hours=2
    )


async def test_unknown_dids_and_quota_are_told_clearly(
    broker: Vhost, rucio_stack: RucioStack, services: tuple[Stack, RucioCatalog]
) -> None:
    name, inner, loose, container = _name(), _name(), _name(), _name("cnt")
    make_dataset(rucio_stack, "user.alice", name, 1)
    make_dataset(rucio_stack, "user.alice", inner, 1)
    single = make_dataset(rucio_stack, "user.alice", loose, 2)[1]
    rucio_stack.client().add_container("user.alice", container)
    rucio_stack.client().attach_dids(
        "user.alice", container, [{"scope": "user.alice", "name": inner}]
    )
    # a container, a dataset, a file and a DID Rucio does not know, in one request
    mixed = await _stage(broker, "alice", f"user.alice:{container}", f"user.alice:{name}",
                         f"user.alice:{single.name}", "user.alice:no-such-thing")  # fmt: skip
    assert mixed.completed
    assert sorted(mixed.ready) == sorted(
        [f"user.alice:{inner}.f0.dat", f"user.alice:{name}.f0.dat",
         f"user.alice:{single.name}"]
    )  # fmt: skip
    assert list(mixed.failed) == ["user.alice:no-such-thing"]
    assert "DataIdentifierNotFound" in mixed.failed["user.alice:no-such-thing"]
    build_lake(rucio_stack, users=("carol",))
    rucio_stack.client().set_local_account_limit("carol", NOTEBOOK, 0)
    broker.add_user("carol")
    over = await _stage(broker, "carol", f"user.alice:{name}")
    assert over.reason is not None
    assert "InsufficientAccountLimit" in over.reason


async def test_hermes_messages_out_of_order_and_twice_change_nothing(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> None:
    name = _name()
    make_dataset(rucio_stack, "user.alice", name, 3)
    spy_connection = await aio_pika.connect(broker.url())
    spy = await (await spy_connection.channel()).declare_queue(exclusive=True)
    await spy.bind(topology.HERMES, "#")
    async with running_services(
        broker.url(),
        tmp_path,
        _catalog(rucio_stack),
        mount=rse_dir(rucio_stack, NOTEBOOK),
        hold=("stager.hermes",),
        retry_delays=(1.0, 2.0, 4.0),
    ) as stack:
        staging = asyncio.create_task(_stage(broker, "alice", f"user.alice:{name}"))
        recorded = await _record_until_rule_ok(spy, name)
        random.shuffle(recorded)
        async with await aio_pika.connect(broker.url()) as connection:
            channel = await connection.channel()
            for body in recorded:  # every message a second time, shuffled
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key="stager.hermes",
                )
        await stack.release("stager.hermes")
        result = await staging
    await spy_connection.close()
    assert result.ok, result
    assert len(result.ready) == 3


async def _record_until_rule_ok(queue: Any, dataset: str) -> list[bytes]:
    bodies: list[bytes] = []
    async with asyncio.timeout(120), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                bodies.append(message.body)
            body = json.loads(message.body)
            if body["event_type"] == "rule_ok" and body["payload"]["name"] == dataset:
                return bodies
    return bodies


async def test_a_rule_that_goes_stuck_is_told_per_file_with_the_reason(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> None:
    name = _name()
    files = make_dataset(rucio_stack, "user.alice", name, 2, at_destination=False)
    # no readable source: Rucio's submitter finds none and the locks go STUCK, silently
    rucio_stack.client().update_replicas_states(
        "ORIGIN", [{"scope": f.scope, "name": f.name, "state": "U"} for f in files]
    )
    async with running_services(
        broker.url(),
        tmp_path,
        _catalog(rucio_stack),
        mount=rse_dir(rucio_stack, NOTEBOOK),
        watchdog_s=2,
    ):
        result = await _stage(broker, "alice", f"user.alice:{name}")
    assert result.completed
    assert not result.ready
    assert sorted(result.failed) == sorted(f"user.alice:{f.name}" for f in files)
    for reason in result.failed.values():
        assert "rule STUCK" in reason
        assert "no readable copy of the file exists in the lake" in reason
        assert "NO_SOURCES" in reason


async def test_a_notebook_output_is_published_back_and_told_when_safe(
    broker: Vhost, rucio_stack: RucioStack, services: tuple[Stack, RucioCatalog]
) -> None:
    name = f"{_name('result')}.h5"
    local = rse_dir(rucio_stack, SCRATCH) / "alice" / name
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(random.randbytes(4096))
    pfn = f"root://127.0.0.1:{rucio_stack.rse_port}//data/scratch/alice/{name}"
    result = await apublish(local, f"user.alice:{name}", rse=SCRATCH, pfn=pfn, to_rse=ORIGIN,
                            timeout=120, settings=_bus(broker.url("alice")))  # fmt: skip
    assert result.ok, result
    assert list(result.ready) == [f"user.alice:{name}"]
    (replica,) = rucio_stack.client().list_replicas(
        [{"scope": "user.alice", "name": name}], rse_expression=ORIGIN, all_states=True
    )
    assert replica["states"] == {ORIGIN: "AVAILABLE"}
    assert replica["adler32"] == checksum(local)[1]


async def test_a_rule_the_stagers_rucio_identity_may_not_make_is_refused_clearly(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> None:
    name = _name()
    make_dataset(rucio_stack, "user.alice", name, 1)
    # the stager as a plain Rucio account (bob, no admin): it may make rules for bob only
    plain = _catalog(rucio_stack, account="bob")
    async with running_services(
        broker.url(), tmp_path, plain, mount=rse_dir(rucio_stack, NOTEBOOK),
        retry_delays=(1.0, 2.0, 4.0),
    ):  # fmt: skip
        refused = await _stage(broker, "alice", f"user.alice:{name}")
        allowed = await _stage(broker, "bob", f"user.alice:{name}")  # the stager goes on
    assert refused.completed
    assert not refused.ready
    assert refused.reason is not None
    for words in (f"user.alice:{name}", "no permission", "(bob)", "account alice",
                  "AccessDenied"):  # fmt: skip
        assert words in refused.reason, refused.reason
    assert allowed.ok, allowed
    assert [r["account"] for r in _rules(rucio_stack, "user.alice", name)] == ["bob"]


async def test_a_big_request_s_rule_made_by_rucio_s_injector_completes_the_same(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> None:
    name = _name()
    make_dataset(rucio_stack, "user.alice", name, 3)
    # "big" from 2 files: the rule is created asynchronously, Rucio's judge-injector makes
    # its locks, then transfers, hermes and rule_ok as for any rule
    async with running_services(
        broker.url(), tmp_path, _catalog(rucio_stack, async_rule_min_files=2),
        mount=rse_dir(rucio_stack, NOTEBOOK), retry_delays=(1.0, 2.0, 4.0),
    ):  # fmt: skip
        result = await _stage(broker, "alice", f"user.alice:{name}")
    assert result.ok, result
    assert len(result.ready) == 3
    (rule,) = _rules(rucio_stack, "user.alice", name)
    assert rule["state"] == "OK"


async def test_the_benchmarks_path_on_a_small_dataset(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> None:
    """bench.stager_rucio's code path on 30 files (the figures come from 100,000)."""
    name = _name("big")
    register_dataset(rucio_stack, "user.alice", name, 30)
    result = await stage_once(broker, rucio_stack, tmp_path, [f"user.alice:{name}"], 30,
                              async_min_files=10, timeout=120)  # fmt: skip
    assert result.failed is None
    assert result.tracked_s is not None
    assert result.injected_s is not None  # made by Rucio's judge-injector
    (rule,) = _rules(rucio_stack, "user.alice", name)
    assert rule["account"] == "alice"
    assert result.adapter_calls["add_replication_rule"] == 1
    assert result.adapter_calls["list_files"] == 1
    assert result.rss_peak_mb >= result.rss_idle_mb > 0
