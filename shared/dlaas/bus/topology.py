"""The one place that declares dlaas's exchanges, queues, retry and dead-letter queues.

Work queues are durable quorum queues. A message a handler cannot take goes to ``<queue>.dlq``
(kept ``dlq_ttl_days``) with the reason in its headers; a transient failure waits in
``<queue>.retry.<delay>ms`` (one fixed TTL per retry queue: RabbitMQ expires head-first) and comes
back to ``<queue>`` through the default exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustQueue

from dlaas.contracts import (
    CacheMiss,
    CancelRequested,
    FileFailed,
    FilePublished,
    FileReady,
    FileStaged,
    FileVisible,
    PublishRequested,
    RequestAccepted,
    RequestCancelled,
    RequestCompleted,
    RequestFailed,
    RuleRequested,
    StatusRequested,
)
from dlaas.settings import BusSettings

EVENTS = "dlaas.events"  # topic: <producer>.<event-type>.v<N>
NOTIFY = "dlaas.notify"  # topic: user.<user>.<request id>
HERMES = "rucio.hermes"  # topic: hermes publishes here over STOMP, routing key = Rucio instance
EXCHANGES = (EVENTS, NOTIFY, HERMES)


@dataclass(frozen=True)
class QueueSpec:
    """A work queue and what it is bound to."""

    name: str
    bindings: tuple[tuple[str, str], ...]

    @property
    def dlq(self) -> str:
        """Dead-letter queue of this queue."""
        return f"{self.name}.dlq"

    def parked(self, ttl_s: float) -> str:
        """Where a message waits after its retries, then comes back (named by its wait)."""
        return f"{self.name}.parked.{round(ttl_s * 1000)}ms"

    def retry(self, delay_s: float) -> str:
        """Retry queue of one backoff delay (named by it: changing delays adds queues)."""
        return f"{self.name}.retry.{round(delay_s * 1000)}ms"


def _on_events(name: str, *routing_keys: str) -> QueueSpec:
    return QueueSpec(name, tuple((EVENTS, key) for key in routing_keys))


STAGER_REQUESTS = _on_events(
    "stager.requests",
    RuleRequested.routing_key(),
    CancelRequested.routing_key(),
    StatusRequested.routing_key(),
    PublishRequested.routing_key(),
)
STAGER_HERMES = QueueSpec("stager.hermes", ((HERMES, "#"),))
STAGER_PROGRESS = _on_events(
    "stager.progress", FileVisible.routing_key(), f"*.{FileFailed.event_type}"
)
CACHE_ROUTER_FILES = _on_events("cache_router.files", FileStaged.routing_key())
CACHE_ROUTER_MISSES = _on_events("cache_router.misses", f"*.{CacheMiss.event_type}")
# files of requests that name no node: any agent takes them (one node, or shared views)
FUSE_AGENT_FILES = _on_events("fuse_agent.files", FileReady.routing_key())
NOTIFIER_EVENTS = _on_events(
    "notifier.events",
    RuleRequested.routing_key(),
    RequestAccepted.routing_key(),
    FileVisible.routing_key(),
    f"*.{FileFailed.event_type}",
    RequestCompleted.routing_key(),
    RequestFailed.routing_key(),
    RequestCancelled.routing_key(),
    FilePublished.routing_key(),
)
WORK_QUEUES = (
    STAGER_REQUESTS,
    STAGER_HERMES,
    STAGER_PROGRESS,
    CACHE_ROUTER_FILES,
    CACHE_ROUTER_MISSES,
    FUSE_AGENT_FILES,
    NOTIFIER_EVENTS,
)


def user_segment(user: str) -> str:
    """A user name as one topic word: dots would let ``user.a.#`` match user ``a.b``."""
    return user.replace(".", "~")


def notify_routing_key(user: str, request_id: str) -> str:
    """Routing key of a notification for ``user`` about ``request_id``."""
    return f"user.{user_segment(user)}.{request_id}"


def status_routing_key(user: str, request_id: str) -> str:
    """Routing key of a status report: four words, so the inbox (three) never keeps it."""
    return f"{notify_routing_key(user, request_id)}.status"


def node_segment(node: str) -> str:
    """A node name as one topic word (node names are often dotted host names)."""
    return node.replace(".", "~")


def file_ready_routing_key(node: str | None) -> str:
    """Where a ready file goes: the fuse agent of the user's node, or any agent.

    ``cache_router.file-ready.v1`` (three words) for any agent, one more word naming the node
    otherwise: the shared queue's exact binding never takes a node's files.
    """
    base = FileReady.routing_key()
    return base if node is None else f"{base}.{node_segment(node)}"


def fuse_agent_node_files(node: str) -> QueueSpec:
    """The work queue of the fuse agent on ``node`` (a DaemonSet pod): its users' files only."""
    return _on_events(f"fuse_agent.files.node.{node}", file_ready_routing_key(node))


def inbox(user: str) -> QueueSpec:
    """The user's durable inbox: every notification of theirs, kept while they are away."""
    return QueueSpec(f"dlaas.inbox.{user}", ((NOTIFY, f"user.{user_segment(user)}.*"),))


async def declare_inbox(
    channel: AbstractChannel, user: str, settings: BusSettings
) -> AbstractRobustQueue:
    """Declare and bind a user's inbox (only the notifier declares it: one set of arguments)."""
    spec = inbox(user)
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": int(settings.inbox_ttl_days * 86_400_000),
        },
    )
    for exchange, routing_key in spec.bindings:
        await queue.bind(exchange, routing_key)
    return queue  # type: ignore[return-value]


def _quorum(settings: BusSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra} | (
        {} if "x-message-ttl" in extra else {"x-delivery-limit": settings.delivery_limit}
    )


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    """Declare dlaas's exchanges (idempotent)."""
    return {
        name: await channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for name in EXCHANGES
    }


async def get_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    """Look dlaas's exchanges up without declaring them: needs no configure right (clients)."""
    return {name: await channel.get_exchange(name) for name in EXCHANGES}


async def declare_queue(
    channel: AbstractChannel, spec: QueueSpec, settings: BusSettings
) -> AbstractRobustQueue:
    """Declare a work queue with its dead-letter and retry queues and bind it."""
    await channel.declare_queue(
        spec.dlq,
        durable=True,
        arguments=_quorum(
            settings, {"x-message-ttl": settings.dlq_ttl_days * 86_400_000}
        ),
    )
    for delay in settings.retry_delays_s:
        await channel.declare_queue(
            spec.retry(delay),
            durable=True,
            arguments=_quorum(
                settings,
                {
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": spec.name,
                },
            ),
        )
    if settings.parked_ttl_s:
        await channel.declare_queue(
            spec.parked(settings.parked_ttl_s),
            durable=True,
            arguments=_quorum(
                settings,
                {
                    "x-message-ttl": int(settings.parked_ttl_s * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": spec.name,
                },
            ),
        )
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments=_quorum(
            settings,
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": spec.dlq},
        ),
    )
    for exchange, routing_key in spec.bindings:
        await queue.bind(exchange, routing_key)
    return queue  # type: ignore[return-value]


async def declare_all(channel: AbstractChannel, settings: BusSettings) -> None:
    """Declare the whole topology: what operators and tests call to set up a vhost."""
    await declare_exchanges(channel)
    for spec in WORK_QUEUES:
        await declare_queue(channel, spec, settings)
