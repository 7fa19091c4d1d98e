"""Several events in one AMQP message: the bus's transport batch.

Under load the handlers of a service publish many events of one kind in the same loop
turn (group commit wakes them together). The bus then sends the events that share an
exchange, a routing key and a ``user_id`` as ONE persistent message (one publish, one
confirm, one queue write, one delivery, one ack) instead of one each; a consumer takes the
message apart and runs its handler once per event, exactly as for single messages. An
event alone is sent as a plain message, so at low load nothing changes on the wire.

Each event keeps its own contract (the versioned model), its ``message_id`` (the event id)
and its ``correlation_id``; what goes wrong with one event (a transient failure, a bad
body) is settled for that event alone: it is copied as a plain message into the retry or
dead-letter queue, and the batch is acked once every event in it is handled or settled.

The envelope (AMQP ``type`` ``dlaas.batch.v1``, ``content_type`` application/json)::

    {"events": [{"type": "file-ready.v1", "message_id": "…", "correlation_id": "…",
                 "body": {…the event…}}, …]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from dlaas.errors import MessageRejectedError

BATCH_TYPE = "dlaas.batch.v1"
BATCH_HEADER = "x-dlaas-batch"  # how many events the message holds
MAX_EVENTS = 10_000  # a consumer refuses bigger batches (a publisher sends far fewer)


@dataclass(frozen=True)
class Item:
    """One event of a batch, as published."""

    type: str
    body: dict[str, Any]
    message_id: str | None = None
    correlation_id: str | None = None

    def json_body(self) -> bytes:
        """The event alone, as a plain message carries it."""
        return json.dumps(self.body, separators=(",", ":")).encode()


def item_json(
    event_type: str, body: bytes, message_id: str | None, correlation_id: str | None
) -> bytes:
    """One item of the envelope, around an event's JSON (not parsed again)."""
    head = json.dumps(
        {"type": event_type, "message_id": message_id, "correlation_id": correlation_id},
        separators=(",", ":"),
    ).encode()
    return head[:-1] + b',"body":' + body + b"}"


def pack(items: list[bytes]) -> bytes:
    """The batch body of items made by :func:`item_json`."""
    return b'{"events":[' + b",".join(items) + b"]}"


def unpack(body: bytes) -> list[Item]:
    """The events of a batch body; MessageRejectedError if it is not one."""
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise MessageRejectedError(f"batch is not JSON: {exc}") from exc
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events:
        raise MessageRejectedError("batch has no list of events")
    if len(events) > MAX_EVENTS:
        raise MessageRejectedError(f"batch of {len(events)} events > {MAX_EVENTS}")
    items = []
    for index, entry in enumerate(events):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("type"), str)
            or not isinstance(entry.get("body"), dict)
        ):
            raise MessageRejectedError(
                f"batch event {index} is not an object with a type and a body"
            )
        message_id, correlation_id = entry.get("message_id"), entry.get("correlation_id")
        items.append(
            Item(
                type=entry["type"],
                body=entry["body"],
                message_id=message_id if isinstance(message_id, str) else None,
                correlation_id=correlation_id
                if isinstance(correlation_id, str)
                else None,
            )
        )
    return items


class _Delivered(Protocol):
    @property
    def type(self) -> str | None: ...
    @property
    def body(self) -> bytes: ...


def unbatch(message: _Delivered) -> list[tuple[str | None, bytes]]:
    """The type and JSON of each event a message carries: its own, or each of a batch.

    For whoever reads the events exchange besides the services (tools, tests, probes).
    """
    if message.type != BATCH_TYPE:
        return [(message.type, message.body)]
    return [(item.type, item.json_body()) for item in unpack(message.body)]
