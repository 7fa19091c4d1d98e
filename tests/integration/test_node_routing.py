"""Routing by node: only the fuse agent of the node where the user's notebook runs acts.

The cache router and two fuse agents (DaemonSet pods on ``node-a`` and ``node-b``, each with
its own views) run in this process against the real broker; the mount is a plain directory,
so no FUSE is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aio_pika
import pytest

from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.contracts import FileStaged, FileVisible
from dlaas.settings import BusSettings
from dlaas_cache_router.app import build as build_cache_router
from dlaas_cache_router.settings import CacheRouterSettings
from dlaas_devstack.broker import Vhost, create_vhost
from dlaas_fuse_agent.app import build as build_fuse_agent
from dlaas_fuse_agent.settings import FuseAgentSettings, FuseOptions, MountSpec

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

ORIGIN = "root://127.0.0.1:1094"
NODE_A, NODE_B = "node-a.cluster.local", "node-b.cluster.local"


@pytest.fixture(scope="module")
def vhost(broker: Vhost) -> Iterator[Vhost]:
    """A vhost of this module's own: its fuse agent queues reach no other test."""
    own = create_vhost(broker.admin, f"{broker.name}-nodes")
    yield Vhost(broker.admin, own.name, broker.host, broker.port)
    own.delete()


@contextlib.asynccontextmanager
async def cluster(
    url: str, tmp: Path, nodes: dict[str, bool]
) -> AsyncIterator[tuple[Bus, dict[str, Path]]]:
    """The cache router and one fuse agent per node (``{node: take_unrouted}``)."""
    settings = BusSettings.model_validate({"url": url, "retry_delays_s": (0.2, 0.5)})
    storage = tmp / "mnt"
    (storage / "user.alice").mkdir(parents=True)
    builders = [
        (
            "cache_router",
            lambda b: build_cache_router(b, CacheRouterSettings(bus=settings)),
        )
    ]
    views: dict[str, Path] = {}
    for node, take_unrouted in nodes.items():
        views[node] = tmp / node / "views"
        options = FuseOptions(
            node=node,
            take_unrouted=take_unrouted,
            mounts=[MountSpec(rse="NOTEBOOK", mount_path=storage, path_begins_at=2)],
            views_root=views[node],
            check_timeout_s=2,
        )
        agent = FuseAgentSettings(bus=settings, fuse=options)
        builders.append(
            (f"fuse_agent@{node}", lambda b, s=agent: build_fuse_agent(b, s))  # type: ignore[misc]
        )
    buses: list[Bus] = []
    consumers: list[Consumer] = []
    try:
        for name, builder in builders:
            bus = await Bus(settings, name=name).connect()
            buses.append(bus)
            consumers += await builder(bus)
        for consumer in consumers:
            await consumer.start()
        client = await Bus(settings, name="test").connect()
        buses.append(client)
        yield client, views
    finally:
        for consumer in consumers:
            await consumer.stop(2)
        for bus in buses:
            await bus.close()


@contextlib.asynccontextmanager
async def visible(url: str) -> AsyncIterator[asyncio.Queue[FileVisible]]:
    """Every file-visible event."""
    got: asyncio.Queue[FileVisible] = asyncio.Queue()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topology.EVENTS, FileVisible.routing_key())

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            for _, body in batch.unbatch(message):
                await got.put(FileVisible.model_validate_json(body))
            await message.ack()

        await queue.consume(keep)
        yield got


def _staged(tmp: Path, name: str, node: str | None) -> FileStaged:
    (tmp / "mnt" / "user.alice" / name).write_bytes(name.encode())
    return FileStaged(
        request_id=uuid.uuid4(),
        user="alice",
        did=f"user.alice:{name}",
        rse="NOTEBOOK",
        pfn=f"{ORIGIN}//data/notebook/user.alice/{name}",
        bytes=len(name),
        node=node,
    )


async def _shown(got: asyncio.Queue[FileVisible], event: FileStaged) -> FileVisible:
    async with asyncio.timeout(15):
        while (answer := await got.get()).request_id != event.request_id:
            pass
    return answer


async def test_a_file_appears_only_on_the_node_that_asked(vhost, tmp_path):
    nodes = {NODE_A: False, NODE_B: False}
    async with (
        cluster(vhost.url(), tmp_path, nodes) as (bus, views),
        visible(vhost.url()) as got,
    ):
        for node, name in ((NODE_B, "b.dat"), (NODE_A, "a.dat"), (NODE_B, "b2.dat")):
            event = _staged(tmp_path, name, node)
            await bus.publish(event)
            shown = await _shown(got, event)
            assert shown.node == node
            assert Path(shown.path).is_relative_to(views[node])
            assert Path(shown.path).read_bytes() == name.encode()
        await asyncio.sleep(0.5)  # nothing else arrives: each file shown once
        assert got.empty()
    assert sorted(p.name for p in (views[NODE_B] / "alice").rglob("*.dat")) == [
        "b.dat",
        "b2.dat",
    ]
    assert [p.name for p in (views[NODE_A] / "alice").rglob("*.dat")] == ["a.dat"]
    # each node has its own durable work queue, the shared one stays for unrouted files
    listed = vhost.admin.call("GET", f"/queues/{quote(vhost.name, safe='')}")
    assert isinstance(listed, list)
    queues = {q["name"] for q in listed}
    assert {
        f"fuse_agent.files.node.{NODE_A}",
        f"fuse_agent.files.node.{NODE_B}",
    } <= queues


async def test_unrouted_files_and_unknown_nodes_go_to_any_agent(vhost, tmp_path):
    """No node in the request, or a node where no agent ever ran: the shared queue."""
    nodes = {NODE_A: True}
    async with (
        cluster(vhost.url(), tmp_path, nodes) as (bus, views),
        visible(vhost.url()) as got,
    ):
        for node, name in ((None, "any.dat"), ("node-z", "z.dat")):
            event = _staged(tmp_path, name, node)
            await bus.publish(event)
            shown = await _shown(got, event)
            assert Path(shown.path).is_relative_to(views[NODE_A])
