"""The four services on the real broker, Rucio faked at the port: the flow, isolation, DLQs."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aio_pika
import pytest

from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import ATTEMPT_HEADER
from dlaas.client.api import StageResult, astage, await_request
from dlaas.contracts import FileVisible, Notification, ReadyEntry, RequestStatus
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_stager.store import STAGED, Store
from tests.fakes.catalog import FakeCatalog
from tests.services import CACHE, Stack, running_services

pytestmark = pytest.mark.broker


def _bus(url: str) -> BusSettings:
    return BusSettings.model_validate({"url": url})


async def _hermes(
    url: str,
    event_type: str,
    payload: object,
    *,
    raw: bytes | None = None,
    attempt: int | None = None,
) -> None:
    """Publish as Rucio's hermes does over STOMP: JSON envelope, event_type header, no type."""
    body = (
        raw
        or json.dumps(
            {
                "event_type": event_type,
                "payload": payload,
                "created_at": "2026-11-23 10:00:00",
            }
        ).encode()
    )
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.HERMES)
        await exchange.publish(
            aio_pika.Message(
                body,
                headers={"event_type": event_type}
                | ({ATTEMPT_HEADER: attempt} if attempt else {}),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="default",  # the instance (hermes publishes with its name)
        )


def _place(stack: Stack, pfn: str) -> None:
    """Put a file where the NOTEBOOK mount shows it (path_begins_at=2 drops /data/notebook)."""
    path = stack.storage.joinpath(*Path(pfn.split("//", 2)[2]).parts[2:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)


async def _spy(
    url: str, user: str
) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractQueue]:
    """A queue bound to everything ``user`` may receive (close the connection after)."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.NOTIFY, f"user.{topology.user_segment(user)}.#")
    return connection, queue


async def test_stage_request_reaches_its_user_only(broker: Vhost, tmp_path: Path) -> None:
    catalog = FakeCatalog()
    files = catalog.add_dataset("user.alice:ds1", 3)
    catalog.make_available(files[0].did, "NOTEBOOK")  # already there: ready at once
    async with running_services(broker.url(), tmp_path, catalog) as stack:
        for info in files:
            catalog.make_available(info.did, "TMP")
            _place(
                stack, catalog.available[info.did, "TMP"].replace("/tmp/", "/notebook/")
            )
        bobs, bob = await _spy(broker.url("bob"), "bob")
        spying = await aio_pika.connect(broker.url())
        visible = await (await spying.channel()).declare_queue(exclusive=True)
        await visible.bind(topology.EVENTS, FileVisible.routing_key())
        # a transfer-done that arrives before the request is even recorded
        catalog.make_available(files[1].did, "NOTEBOOK")
        scope, _, name = files[1].did.partition(":")
        await _hermes(
            broker.url(),
            "transfer-done",
            {"request-id": "r1", "scope": scope, "name": name, "dst-rse": "NOTEBOOK"},
        )

        async def later(note: Notification, _: StageResult) -> None:
            catalog.make_available(files[2].did, "NOTEBOOK")
            rule_id = next(iter(catalog.rules.values()))
            await _hermes(
                broker.url(),
                "rule_ok",
                {"scope": "user.alice", "name": "ds1", "rule_id": rule_id},
            )

        tasks: list[asyncio.Task[None]] = []
        result = await astage(
            ["user.alice:ds1"],
            rse="NOTEBOOK",
            timeout=30,
            settings=_bus(broker.url("alice")),
            on_update=lambda n, r: (
                tasks.append(asyncio.ensure_future(later(n, r)))
                if n.kind == "accepted"
                else None
            ),
            node="notebook-node-1.example.org",
        )
        await asyncio.gather(*tasks)
        # the node travels with every file; no agent runs there: the shared queue took them
        nodes: list[str | None] = []
        while len(nodes) < len(files):
            message = await visible.get()
            nodes += [
                FileVisible.model_validate_json(body).node
                for _, body in batch.unbatch(message)
            ]
        await spying.close()
    assert nodes == ["notebook-node-1.example.org"] * len(files)
    assert result.ok, result
    assert sorted(result.ready) == sorted(f.did for f in files)
    for did, ready in result.ready.items():
        pfn = catalog.available[did, "NOTEBOOK"]
        assert ready.pfn == pfn
        assert ready.cache_url == f"{CACHE}//{pfn}"
        view = Path(ready.path)
        assert view == stack.views / "alice" / "user.alice" / did.partition(":")[2]
        assert view.is_symlink()
        assert view.read_bytes() == b"x" * 100
    await asyncio.sleep(0.5)
    try:
        assert await bob.get(fail=False) is None, "bob received alice's notification"
    finally:
        await bobs.close()


async def test_request_for_unknown_did_fails_clearly(
    broker: Vhost, tmp_path: Path
) -> None:
    async with running_services(broker.url(), tmp_path, FakeCatalog()):
        result = await astage(
            ["user.alice:nope"],
            rse="NOTEBOOK",
            timeout=30,
            settings=_bus(broker.url("alice")),
        )
    assert result.completed
    assert not result.ok
    assert result.reason is not None
    assert "DataIdentifierNotFound" in result.reason


BAD: dict[str, list[tuple[bytes, str | None]]] = {
    "stager.requests": [
        (b"{not json", "rule-requested.v1"),
        (b'{"request_id": "x"}', "rule-requested.v1"),
        (b"{}", "no-such-event.v1"),
    ],
    "cache_router.files": [(b'{"did": 42}', "file-staged.v1")],
    "fuse_agent.files": [(b"[]", "file-ready.v1")],
    "notifier.events": [(b"\xff\xfe", "file-visible.v1")],
    "stager.progress": [(b"{}", None)],
}


async def test_malformed_messages_are_dead_lettered_with_reason(
    broker: Vhost, tmp_path: Path
) -> None:
    async with running_services(broker.url(), tmp_path, FakeCatalog()):
        async with await aio_pika.connect(broker.url()) as connection:
            channel = await connection.channel()
            for queue, messages in BAD.items():
                for body, kind in messages:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, type=kind), routing_key=queue
                    )
            big = b'{"x": "' + b"a" * 2_000_000 + b'"}'
            await channel.default_exchange.publish(
                aio_pika.Message(big, type="rule-requested.v1"),
                routing_key="stager.requests",
            )
        await _hermes(broker.url(), "no-such-type", {})
        await _hermes(broker.url(), "transfer-done", {"scope": "s"})  # wrong shape
        await _hermes(
            broker.url(), "create_dts", {"scope": "s", "name": "n"}
        )  # valid, unused
        await _hermes(broker.url(), "x", {}, raw=b"not json at all")
        await asyncio.sleep(1.5)
        # still consuming: a valid request after all that garbage is answered
        result = await astage(
            ["user.alice:nope"],
            rse="NOTEBOOK",
            timeout=30,
            settings=_bus(broker.url("alice")),
        )
        assert result.reason is not None
    reasons: dict[str, list[str]] = {}
    for queue in [*BAD, "stager.hermes"]:
        dead = broker.get_messages(f"{queue}.dlq")
        reasons[queue] = [str(m["properties"]["headers"]["x-dlaas-reason"]) for m in dead]  # type: ignore[index]
    assert len(reasons["stager.requests"]) == 4
    assert any("malformed" in r for r in reasons["stager.requests"])
    assert any(
        "unknown event type 'no-such-event.v1'" in r for r in reasons["stager.requests"]
    )
    assert any("too large" in r for r in reasons["stager.requests"])
    for queue in (
        "cache_router.files",
        "fuse_agent.files",
        "notifier.events",
        "stager.progress",
    ):
        assert len(reasons[queue]) == 1, queue
    assert len(reasons["stager.hermes"]) == 3
    assert any(
        "unknown hermes event type 'no-such-type'" in r for r in reasons["stager.hermes"]
    )


async def test_a_dry_run_reports_and_creates_nothing(
    broker: Vhost, tmp_path: Path
) -> None:
    catalog = FakeCatalog()
    files = catalog.add_dataset("user.alice:ds9", 2)
    catalog.make_available(files[0].did, "NOTEBOOK")
    async with running_services(broker.url(), tmp_path, catalog):
        result = await astage(["user.alice:ds9", "user.alice:nope"], rse="NOTEBOOK",
                              dry_run=True, timeout=30, settings=_bus(broker.url("alice")))  # fmt: skip
    planned = {e.did: e for e in result.plan}
    assert (planned["user.alice:ds9"].kind, planned["user.alice:ds9"].files) == (
        "DATASET",
        2,
    )
    assert planned["user.alice:ds9"].available == 1
    assert planned["user.alice:nope"].reason is not None
    assert "add_replication_rule" not in catalog.calls


async def test_a_rucio_outage_delays_a_request_and_never_loses_it(
    broker: Vhost, tmp_path: Path
) -> None:
    catalog = FakeCatalog(
        outage=5
    )  # more failures than retries: the request is parked once
    files = catalog.add_dataset("user.alice:ds7", 1)
    catalog.make_available(files[0].did, "NOTEBOOK")
    async with running_services(
        broker.url(), tmp_path, catalog, retry_delays=(0.2, 0.2), parked_ttl_s=1.0
    ) as stack:
        _place(stack, catalog.available[files[0].did, "NOTEBOOK"])
        result = await astage(["user.alice:ds7"], rse="NOTEBOOK", timeout=60,
                              settings=_bus(broker.url("alice")))  # fmt: skip
    assert result.ok, result
    assert catalog.calls.count("list_files") == 6  # 1 + 2 retries, parked, 1 + 2 retries


async def test_a_claim_whose_announcement_died_is_announced_again(
    broker: Vhost, tmp_path: Path
) -> None:
    """The stager claimed a file, then died before announcing it: the message comes again
    (redelivered, or retried) and the file is announced then; a plain repeat does not."""
    catalog = FakeCatalog()
    files = catalog.add_dataset("user.alice:ds5", 2)
    async with running_services(broker.url(), tmp_path, catalog) as stack:
        sent = await astage(["user.alice:ds5"], rse="NOTEBOOK", wait=False,
                            settings=_bus(broker.url("alice")))  # fmt: skip
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'stager.db'}")
        try:
            async with asyncio.timeout(30):
                while len(await store.waiting_in_request(str(sent.request_id))) < 2:
                    await asyncio.sleep(0.1)
            # what a stager killed between its claim and its announcement leaves behind
            lost = files[0].did
            assert await store.set_file_state(str(sent.request_id), lost, STAGED)
        finally:
            await store.close()
        for info in files:
            catalog.make_available(info.did, "NOTEBOOK")
            _place(stack, catalog.available[info.did, "NOTEBOOK"])
        for info, attempt in ((files[0], None), (files[1], None), (files[0], 2)):
            scope, _, name = info.did.partition(":")
            payload = {"request-id": "r", "scope": scope, "name": name,
                       "dst-rse": "NOTEBOOK"}  # fmt: skip
            await _hermes(broker.url(), "transfer-done", payload, attempt=attempt)
        result = await await_request(sent.request_id, timeout=30,
                                     settings=_bus(broker.url("alice")))  # fmt: skip
    assert result.ok, result
    assert sorted(result.ready) == sorted(f.did for f in files)


async def test_a_transfer_done_retried_still_names_its_instance(
    broker: Vhost, tmp_path: Path
) -> None:
    """Hermes often says done before Rucio has the replica AVAILABLE: the message waits in
    a retry queue and comes back through the default exchange; it must still count as the
    default instance's (its routing key is kept), or only rule_ok would ever stage it."""
    catalog = FakeCatalog()
    files = catalog.add_dataset("user.alice:ds6", 1)
    async with running_services(broker.url(), tmp_path, catalog) as stack:
        sent = await astage(["user.alice:ds6"], rse="NOTEBOOK", wait=False,
                            settings=_bus(broker.url("alice")))  # fmt: skip
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'stager.db'}")
        try:
            async with asyncio.timeout(30):
                while not await store.waiting_in_request(str(sent.request_id)):
                    await asyncio.sleep(0.1)
        finally:
            await store.close()
        scope, _, name = files[0].did.partition(":")
        payload = {"request-id": "r", "scope": scope, "name": name, "dst-rse": "NOTEBOOK"}
        await _hermes(
            broker.url(), "transfer-done", payload
        )  # not AVAILABLE yet: retried
        await asyncio.sleep(0.1)
        catalog.make_available(files[0].did, "NOTEBOOK")
        _place(stack, catalog.available[files[0].did, "NOTEBOOK"])
        result = await await_request(sent.request_id, timeout=15,
                                     settings=_bus(broker.url("alice")))  # fmt: skip
    assert result.ok, result


async def test_a_transfer_done_before_rucio_marks_the_replica_is_checked_again_soon(
    broker: Vhost, tmp_path: Path
) -> None:
    """Hermes says done before the finisher marks the replica: no 60 s bus retry to wait."""
    catalog = FakeCatalog()
    (file,) = catalog.add_dataset("user.alice:ds7", 1)
    scope, _, name = file.did.partition(":")
    async with running_services(
        broker.url(), tmp_path, catalog, retry_delays=(60.0,)
    ) as stack:
        _place(stack, f"root://127.0.0.1:1094//data/notebook/{scope}/{name}")

        async def transfer_done_then_available() -> None:
            await _hermes(
                broker.url(),
                "transfer-done",
                {"request-id": "r7", "scope": scope, "name": name, "dst-rse": "NOTEBOOK"},
            )
            await asyncio.sleep(0.8)  # Rucio's finisher, a little behind its poller
            catalog.make_available(file.did, "NOTEBOOK")

        tasks: list[asyncio.Task[None]] = []
        result = await astage(
            ["user.alice:ds7"],
            rse="NOTEBOOK",
            timeout=10,  # a bus retry would come after 60 s, the watchdog after 20 s
            settings=_bus(broker.url("alice")),
            on_update=lambda n, _: (
                tasks.append(asyncio.ensure_future(transfer_done_then_available()))
                if n.kind == "accepted"
                else None
            ),
        )
        await asyncio.gather(*tasks)
    assert result.ok, result
    assert list(result.ready) == [file.did]


async def test_a_completion_with_files_not_heard_of_asks_for_the_status_again(
    broker: Vhost,
) -> None:
    """A client that began listening after a file's notification, and whose status report
    was made a moment before the stager recorded that file, learns of it once the
    request completes (the test plays the stager and the notifier)."""
    settings = BusSettings.model_validate({"url": broker.url()})
    stager = await Bus(settings, name="stager").connect()
    try:
        await topology.declare_all(stager.channel, settings)
        asks = await stager.channel.get_queue(topology.STAGER_REQUESTS.name)
        rid, user = uuid.uuid4(), "alice"
        files = [
            ReadyEntry(did=f"user.alice:f{n}", path=f"/v/f{n}", pfn="p", cache_url="c",
                       bytes=10)
            for n in range(2)
        ]  # fmt: skip
        waiting = asyncio.ensure_future(
            await_request(rid, timeout=20, settings=_bus(broker.url(user)))
        )
        reports = [files[:1], files]  # the first report lags; the second has both
        for ready in reports:
            async with asyncio.timeout(10):
                while (message := await asks.get(fail=False)) is None:
                    await asyncio.sleep(0.05)
            await message.ack()
            report = RequestStatus(
                request_id=rid, user=user, files_total=2, files_ready=len(ready),
                state="accepted" if len(ready) < 2 else "completed", ready=ready,
            )  # fmt: skip
            key = topology.status_routing_key(user, str(rid))
            await stager.publish(report, exchange=topology.NOTIFY, routing_key=key)
            if len(ready) < 2:  # what the notifier sends once the last file is visible
                done = Notification(
                    request_id=rid, user=user, kind="completed", text="done",
                    files_ready=2, source_event_id=str(uuid.uuid4()),
                )  # fmt: skip
                key = topology.notify_routing_key(user, str(rid))
                await stager.publish(done, exchange=topology.NOTIFY, routing_key=key)
        result = await waiting
    finally:
        await stager.close()
    assert result.done
    assert sorted(result.ready) == [f.did for f in files]
