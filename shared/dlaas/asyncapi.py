"""The AsyncAPI 3.0 document of the dlaas bus, generated from the contracts and the topology.

Channels are (exchange, routing key) pairs; operations say which service publishes or consumes
each one, and through which queue. ``python -m dlaas.asyncapi > docs/asyncapi.yaml`` writes
the committed copy (a test fails when it is stale).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dlaas.bus import batch, topology
from dlaas.contracts import EVENT_TYPES, Event, Notification
from dlaas.contracts.hermes import HERMES_OTHER_TYPES, HERMES_PAYLOADS, HermesEnvelope

AMQP_BINDING = "0.3.0"
VHOST = "dlaas"
SCHEMAS = "#/components/schemas/{model}"
# file-failed names the shared producer "dlaas": every stage that can fail a file publishes it
SHARED_PRODUCER = "dlaas"
FILE_FAILED_BY = ("stager", "cache_router", "fuse_agent")
# producers outside dlaas whose events a service publishes for them: the cache router turns
# the caches' pfc monitoring stream into cache-miss events
RELAYED_BY = {"xcache": "cache_router"}
HERMES_SENDER = "rucio-hermes"
SERVICES = tuple(dict.fromkeys(spec.name.split(".")[0] for spec in topology.WORK_QUEUES))


@dataclass(frozen=True)
class Channel:
    """One routing key (or pattern of keys) on one exchange, and what travels on it."""

    id: str
    exchange: str
    address: str
    messages: dict[str, str]  # message name -> AMQP type / hermes event_type
    senders: tuple[str, ...]
    description: str
    parameters: tuple[tuple[str, str], ...] = ()


def senders(model: type[Event]) -> tuple[str, ...]:
    """Who publishes ``model``: its producer (or its relay), every stage for the shared one."""
    if model.producer == SHARED_PRODUCER:
        return FILE_FAILED_BY
    return (RELAYED_BY.get(model.producer, model.producer),)


def hermes_message_name(event_type: str) -> str:
    """Message name of a hermes type: ``transfer-done`` -> ``HermesTransferDone``."""
    return "Hermes" + "".join(word.title() for word in re.split(r"[-_]", event_type))


def channels() -> list[Channel]:
    """Every channel: one per dlaas event type, the users' notifications, Rucio's hermes."""
    found = [
        Channel(
            id=f"events.{model.routing_key()}",
            exchange=topology.EVENTS,
            address=model.routing_key(),
            messages={model.__name__: model.event_type, BATCH: batch.BATCH_TYPE},
            senders=senders(model),
            description=(model.__doc__ or "").strip(),
        )
        for model in EVENT_TYPES.values()
        if model is not Notification
    ]
    found.append(
        Channel(
            id="notify.user",
            exchange=topology.NOTIFY,
            address="user.{user}.{request_id}",
            messages={
                Notification.__name__: Notification.event_type,
                BATCH: batch.BATCH_TYPE,
            },
            senders=(Notification.producer,),
            description="Notifications for one user about one request: their inbox "
            f"({topology.inbox('{user}').name}) and their live clients bind user.{{user}}.*",
            parameters=(
                ("user", "Broker login of the user, dots written as ~"),
                ("request_id", "The stage request"),
            ),
        )
    )
    hermes = {hermes_message_name(t): t for t in HERMES_PAYLOADS}
    found.append(
        Channel(
            id="hermes.instance",
            exchange=topology.HERMES,
            address="{instance}",
            messages=hermes | {"HermesOtherType": "other"},
            senders=(HERMES_SENDER,),
            description="Rucio's hermes publishes every message type here over STOMP "
            "(destination /exchange/rucio.hermes/{instance}); types dlaas does not use are "
            "acked and counted, never dead-lettered",
            parameters=(("instance", "Name of the Rucio instance"),),
        )
    )
    return found


def topic_matches(pattern: str, address: str) -> bool:
    """Whether a binding ``pattern`` matches a channel ``address`` (a parameter is one word)."""
    words = re.sub(r"\{[^}]+\}", "param", address).split(".")
    return _match(pattern.split("."), words)


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    if pattern[0] == "#":
        return any(_match(pattern[1:], words[i:]) for i in range(len(words) + 1))
    head_ok = bool(words) and pattern[0] in ("*", words[0])
    return head_ok and _match(pattern[1:], words[1:])


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*EVENT_TYPES.values(), HermesEnvelope]
    models += list(dict.fromkeys(HERMES_PAYLOADS.values()))
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template=SCHEMAS
    )
    schemas: dict[str, Any] = dict(sorted(top["$defs"].items()))
    envelope = schemas["HermesEnvelope"]
    for event_type, model in HERMES_PAYLOADS.items():
        props = envelope["properties"] | {
            "event_type": {"const": event_type, "type": "string"},
            "payload": {"$ref": SCHEMAS.format(model=model.__name__)},
        }
        schemas[hermes_message_name(event_type) + "Body"] = envelope | {
            "title": f"hermes {event_type}",
            "properties": props,
        }
    return schemas


BATCH = "Batch"  # the message name of dlaas.bus.batch's envelope


def _batch_message() -> dict[str, Any]:
    item = {
        "type": "object",
        "required": ["type", "body"],
        "properties": {
            "type": {"type": "string", "description": "The event's AMQP type"},
            "message_id": {"type": ["string", "null"], "description": "Its event id"},
            "correlation_id": {"type": ["string", "null"]},
            "body": {"type": "object", "description": "The event, as alone"},
        },
    }
    return {
        "name": BATCH,
        "title": batch.BATCH_TYPE,
        "summary": "Several events of this channel that happened together, in one message",
        "description": (batch.__doc__ or "").strip(),
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "minItems": 1, "items": item}},
        },
        "bindings": {
            "amqp": {"messageType": batch.BATCH_TYPE, "bindingVersion": AMQP_BINDING}
        },
    }


def _event_message(name: str, event_type: str) -> dict[str, Any]:
    if event_type == batch.BATCH_TYPE:
        return _batch_message()
    model = EVENT_TYPES[event_type]
    return {
        "name": name,
        "title": event_type,
        "summary": (model.__doc__ or "").strip().splitlines()[0],
        "contentType": "application/json",
        "payload": {"$ref": SCHEMAS.format(model=name)},
        "bindings": {"amqp": {"messageType": event_type, "bindingVersion": AMQP_BINDING}},
    }


def _hermes_message(name: str, event_type: str) -> dict[str, Any]:
    other = event_type == "other"
    return {
        "name": name,
        "title": "any other Rucio type" if other else f"hermes {event_type}",
        "summary": (
            f"Known Rucio types dlaas ignores: {', '.join(sorted(HERMES_OTHER_TYPES))}"
            if other
            else f"Rucio's {event_type} message, as hermes sends it"
        ),
        "headers": {
            "type": "object",
            "properties": {"event_type": {"type": "string", "description": "Rucio type"}},
        },
        "payload": {
            "$ref": SCHEMAS.format(model="HermesEnvelope" if other else name + "Body")
        },
    }


def _channel(channel: Channel) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "address": channel.address,
        "description": channel.description,
        "messages": {
            name: {"$ref": f"#/components/messages/{name}"} for name in channel.messages
        },
    }
    if channel.parameters:
        doc["parameters"] = {
            name: {"description": text} for name, text in channel.parameters
        }
    exchange = {
        "name": channel.exchange,
        "type": "topic",
        "durable": True,
        "autoDelete": False,
    }
    doc["bindings"] = {
        "amqp": {
            "is": "routingKey",
            "exchange": exchange | {"vhost": VHOST},
            "bindingVersion": AMQP_BINDING,
        }
    }
    return doc


def _operation(
    action: str, who: str, channel: Channel, extra: dict[str, Any]
) -> dict[str, Any]:
    verb = "publishes" if action == "send" else "consumes"
    binding = {"deliveryMode": 2} if action == "send" else {"ack": True}
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel.id}"},
        "summary": f"{who} {verb} {', '.join(channel.messages)}",
        "messages": [
            {"$ref": f"#/channels/{channel.id}/messages/{name}"}
            for name in channel.messages
        ],
        "tags": [{"name": who}],
        "bindings": {"amqp": binding | {"bindingVersion": AMQP_BINDING}},
        **extra,
    }


def _operations(found: list[Channel]) -> Iterator[tuple[str, dict[str, Any]]]:
    for channel in found:
        for who in channel.senders:
            yield f"{who}.send.{channel.id}", _operation("send", who, channel, {})
    for spec in topology.WORK_QUEUES:
        service = spec.name.split(".")[0]
        for exchange, pattern in spec.bindings:
            for channel in found:
                if channel.exchange == exchange and topic_matches(
                    pattern, channel.address
                ):
                    extra = {"x-dlaas-queue": spec.name, "x-dlaas-binding-key": pattern}
                    op_id = f"{spec.name}.receive.{channel.id}"
                    yield op_id, _operation("receive", service, channel, extra)
    notify = next(c for c in found if c.exchange == topology.NOTIFY)
    inbox = topology.inbox("{user}")
    extra = {"x-dlaas-queue": inbox.name, "x-dlaas-binding-key": inbox.bindings[0][1]}
    yield "client.receive.notify.user", _operation("receive", "client", notify, extra)


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document as a plain dict."""
    found = channels()
    messages: dict[str, Any] = {}
    for channel in found:
        for name, event_type in channel.messages.items():
            hermes = channel.exchange == topology.HERMES
            messages[name] = (_hermes_message if hermes else _event_message)(
                name, event_type
            )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "dlaas bus",
            "version": version("dlaas"),
            "description": (
                "Events of DataLake-as-a-Service for Rucio. Every message is persistent, "
                "published with confirms; the AMQP type property carries the versioned event "
                "type. Events of one channel that happen together may share one message "
                f"of type {batch.BATCH_TYPE} (the Batch message; read it with "
                "dlaas.bus.batch.unbatch). Malformed or unknown messages go to <queue>.dlq "
                "with x-dlaas-reason; transient failures wait in <queue>.retry.<n>."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "rabbitmq.example.org:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": f"/{VHOST}",
                "description": "RabbitMQ (amqps on 5671 in production); the login is the user",
            },
            "hermes": {
                "host": "rabbitmq.example.org:61613",
                "protocol": "stomp",
                "description": "RabbitMQ's STOMP plugin, where Rucio's hermes publishes",
            },
        },
        "channels": {channel.id: _channel(channel) for channel in found},
        "operations": dict(_operations(found)),
        "components": {"messages": messages, "schemas": _schemas()},
    }


_PLAIN = re.compile(r"[A-Za-z_$][A-Za-z0-9_.\-/$]*")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: object) -> str:
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _RESERVED
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value)


def to_yaml(value: object, indent: int = 0) -> str:
    """Block-style YAML of JSON-like data (strings quoted JSON-style whenever in doubt)."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            nested = isinstance(item, dict | list) and item
            lines.append(
                f"{head}\n{to_yaml(item, indent + 2)}"
                if nested
                else f"{head} {to_yaml(item)}"
            )
        return "\n".join(lines)
    if isinstance(value, list) and value:
        return "\n".join(f"{pad}- {to_yaml(item, indent + 2).lstrip()}" for item in value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return _scalar(value)


def render() -> str:
    """The committed text of ``docs/asyncapi.yaml``."""
    header = "# Generated by `python -m dlaas.asyncapi` from dlaas.contracts and dlaas.bus.topology.\n"
    return header + to_yaml(document()) + "\n"


def main() -> None:
    """Print the document: ``python -m dlaas.asyncapi > docs/asyncapi.yaml``."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
