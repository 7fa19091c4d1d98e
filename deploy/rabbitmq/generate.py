# ruff: noqa: INP001  (a script beside the file it writes, not a package)
"""Write ``definitions.json`` (RabbitMQ broker definitions) from ``dlaas.bus.topology``.

The queues, exchanges and bindings are recorded by running the topology's own ``declare_all``
against a recording channel, so the file cannot drift from what the services declare. Users get
the least each service needs (see docs/operations.md). Run after changing the topology::

    .venv/bin/python deploy/rabbitmq/generate.py          # rewrite definitions.json
    .venv/bin/python deploy/rabbitmq/generate.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aio_pika.abc import AbstractChannel

from dlaas import asyncapi
from dlaas.bus import topology
from dlaas.contracts import Notification
from dlaas.settings import BusSettings

OUT = Path(__file__).with_name("definitions.json")
VHOST = asyncapi.VHOST
USERS = {service: f"dlaas-{service.replace('_', '-')}" for service in asyncapi.SERVICES}
HERMES_USER = "rucio-hermes"
MONITOR_USER = "dlaas-keda"  # KEDA reads queue lengths through the management API
DEFAULT_EXCHANGE = "amq.default"  # how permissions name the default exchange
INBOX_OWNER = Notification.producer  # only the notifier declares users' inboxes
INBOX_MAX_LENGTH = 100_000
NOTHING = "^$"
Json = dict[str, Any]


@dataclass
class _Recorder:
    """Stands in for an aio-pika channel and records what the topology declares."""

    exchanges: list[Json] = field(default_factory=list)
    queues: list[Json] = field(default_factory=list)
    bindings: list[Json] = field(default_factory=list)

    async def declare_exchange(self, name: str, kind: Any, *, durable: bool) -> str:  # noqa: ANN401
        self.exchanges.append(
            {
                "name": name,
                "vhost": VHOST,
                "type": str(kind.value),
                "durable": durable,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        )
        return name

    async def declare_queue(self, name: str, *, durable: bool, arguments: Json) -> _Queue:
        self.queues.append(
            {
                "name": name,
                "vhost": VHOST,
                "durable": durable,
                "auto_delete": False,
                "arguments": dict(arguments),
            }
        )
        return _Queue(name, self)


@dataclass
class _Queue:
    name: str
    recorder: _Recorder

    async def bind(self, exchange: str, routing_key: str) -> None:
        self.recorder.bindings.append(
            {
                "source": exchange,
                "vhost": VHOST,
                "destination": self.name,
                "destination_type": "queue",
                "routing_key": routing_key,
                "arguments": {},
            }
        )


NODE_AGENT = "fuse_agent"  # runs one per node, with a work queue per node


def _esc(name: str) -> str:
    """``name`` as a literal in a regex (RabbitMQ matches permissions with PCRE)."""
    return re.escape(name).replace("\\-", "-")


def _side_queues() -> str:
    """The dead-letter, retry and parked queue names of a queue, as a suffix regex (any delay)."""
    nameless = topology.QueueSpec("", ())
    retry = _esc(nameless.retry(0)).replace("0", "[0-9]+")
    parked = _esc(nameless.parked(0)).replace("0", "[0-9]+")
    return f"{_esc(nameless.dlq)}|{retry}|{parked}"


_SIDE_QUEUES = _side_queues()


def _any_of(patterns: list[str]) -> str:
    return "^(" + "|".join(dict.fromkeys(patterns)) + ")$" if patterns else NOTHING


def _words(template: str, *placeholders: str) -> str:
    """A routing-key template as a regex, each placeholder standing for any one word."""
    regex = _esc(template)
    for placeholder in placeholders:
        regex = regex.replace(_esc(placeholder), "[^.]+")
    return regex


def _inbox_key() -> str:
    return _words(topology.inbox("USER").bindings[0][1], "USER")


def _service_rights(service: str) -> tuple[Json, list[Json]]:
    """Permissions and topic permissions of one service's user."""
    specs = [s for s in topology.WORK_QUEUES if s.name.split(".")[0] == service]
    names = [_esc(s.name) for s in specs]
    node_keys = []
    if service == NODE_AGENT:  # a DaemonSet: each pod declares its node's queue too
        names.append(
            _esc(topology.fuse_agent_node_files("NODE").name).replace("NODE", ".+")
        )
        node_keys.append(_words(topology.file_ready_routing_key("NODE"), "NODE"))
    own = "(" + "|".join(names) + f")({_SIDE_QUEUES})?"
    sends = [c for c in asyncapi.channels() if service in c.senders]
    publishes = sorted({c.exchange for c in sends})
    sources = sorted({exchange for s in specs for exchange, _ in s.bindings})
    # Bus.connect declares every exchange (configure); retries and dead letters go through
    # the default exchange, which is also the dead-letter exchange of the queues (write)
    configure = [own, *map(_esc, topology.EXCHANGES)]
    write = [own, *map(_esc, publishes), _esc(DEFAULT_EXCHANGE)]
    read = [own, *map(_esc, sources)]
    if service == INBOX_OWNER:
        inbox = _esc(topology.inbox("x").name[:-1]) + ".+"
        configure.append(inbox)
        write.append(inbox)
        read.append(_esc(topology.NOTIFY))
    user = USERS[service]
    permissions = {
        "user": user,
        "vhost": VHOST,
        "configure": _any_of(configure),
        "write": _any_of(write),
        "read": _any_of(read),
    }
    topics = []
    for exchange in topology.EXCHANGES:
        keys = [_esc(k) for s in specs for ex, k in s.bindings if ex == exchange]
        if exchange == topology.EVENTS:
            keys += node_keys
        prefixes = sorted(
            {c.address.split(".")[0] for c in sends if c.exchange == exchange}
        )
        writes = [_esc(p) + r"\..+" for p in prefixes if exchange == topology.EVENTS]
        if exchange == topology.NOTIFY and service == INBOX_OWNER:
            writes.append(
                _words(topology.notify_routing_key("USER", "REQ"), "USER", "REQ")
            )
            keys.append(_inbox_key())
        if keys or writes:
            topics.append(
                {
                    "user": user,
                    "vhost": VHOST,
                    "exchange": exchange,
                    "write": _any_of(writes),
                    "read": _any_of(keys),
                }
            )
    return permissions, topics


def _user(name: str, tags: list[str]) -> Json:
    # an obvious placeholder: import_definitions hashes it; set the real one afterwards
    return {"name": name, "password": f"CHANGE-ME-{name}", "tags": tags, "limits": {}}


def definitions() -> Json:
    """The broker definitions, as a dict ready for ``json.dumps``."""
    recorder = _Recorder()
    asyncio.run(topology.declare_all(cast("AbstractChannel", recorder), BusSettings()))
    users = [_user(USERS[s], ["impersonator"]) for s in asyncapi.SERVICES]
    users += [_user(HERMES_USER, []), _user(MONITOR_USER, ["monitoring"])]
    permissions, topic_permissions = [], []
    for service in asyncapi.SERVICES:
        own, topics = _service_rights(service)
        permissions.append(own)
        topic_permissions += topics
    hermes = _esc(topology.HERMES)
    permissions += [
        {
            "user": HERMES_USER,
            "vhost": VHOST,
            "configure": NOTHING,
            "write": f"^{hermes}$",
        }
        | {"read": NOTHING},
        {"user": MONITOR_USER, "vhost": VHOST, "configure": NOTHING, "write": NOTHING}
        | {"read": NOTHING},
    ]
    inbox_prefix = _esc(topology.inbox("x").name[:-1])
    policies = [
        {
            "vhost": VHOST,
            "name": "dlaas-inbox-cap",
            "pattern": f"^{inbox_prefix}",
            "apply-to": "queues",
            "priority": 0,
            # a user away for long keeps the newest notifications, not an unbounded queue
            "definition": {"max-length": INBOX_MAX_LENGTH, "overflow": "drop-head"},
        }
    ]
    return {
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "policies": policies,
        "exchanges": recorder.exchanges,
        "queues": recorder.queues,
        "bindings": recorder.bindings,
    }


def render() -> str:
    """The committed text of ``definitions.json``."""
    return json.dumps(definitions(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Write the file, or with ``--check`` say whether it is stale."""
    text = render()
    if "--check" in argv:
        stale = not OUT.is_file() or OUT.read_text(encoding="utf-8") != text
        if stale:
            sys.stderr.write(f"{OUT} is stale: run {Path(__file__).name}\n")
        return int(stale)
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
