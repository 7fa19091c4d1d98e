"""Decoders: bytes of a delivery to a typed model, or an exception the consumer dead-letters."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from dlaas.bus.consumer import Decoded, Decoder
from dlaas.contracts.base import Event
from dlaas.contracts.hermes import HERMES_OTHER_TYPES, HERMES_PAYLOADS, HermesEnvelope
from dlaas.errors import MessageRejectedError


class _Events:
    """Decodes dlaas events by type: a message by its AMQP ``type``, a batch's event by its own."""

    def __init__(self, models: tuple[type[Event], ...]) -> None:
        self.by_type = {model.event_type: model for model in models}

    def __call__(self, message: AbstractIncomingMessage) -> Decoded:
        if not message.type:
            raise MessageRejectedError("message has no AMQP type property")
        return Decoded(
            message.type, self._model(message.type).model_validate_json(message.body)
        )

    def item(self, kind: str, body: dict[str, Any]) -> Decoded:
        """One event of a batch (:mod:`dlaas.bus.batch`), its body already parsed."""
        return Decoded(kind, self._model(kind).model_validate(body))

    def _model(self, kind: str) -> type[Event]:
        model = self.by_type.get(kind)
        if model is None:
            raise MessageRejectedError(f"unknown event type {kind!r}")
        return model


def events(*models: type[Event]) -> Decoder:
    """Decode dlaas events by the AMQP ``type`` property; other types are refused.

    The decoder also takes the events of a batch (``.item``), so such a queue accepts
    batches.
    """
    return _Events(models)


def hermes(used: Collection[str]) -> Decoder:
    """Decode Rucio hermes messages of the ``used`` types.

    Other valid Rucio types are ignored (acked and counted); a type Rucio does not send or a
    payload of the wrong shape is refused.
    """

    def decode(message: AbstractIncomingMessage) -> Decoded:
        envelope = _envelope(message.body)
        model = HERMES_PAYLOADS.get(envelope.event_type)
        if model is None:
            if envelope.event_type in HERMES_OTHER_TYPES:
                return Decoded(envelope.event_type, None)
            raise MessageRejectedError(
                f"unknown hermes event type {envelope.event_type!r}"
            )
        payload = model.model_validate(envelope.payload)
        return Decoded(
            envelope.event_type, payload if envelope.event_type in used else None
        )

    return decode


def _envelope(body: bytes) -> HermesEnvelope:
    """Hermes's envelope, its payload checked to be an object but not walked twice.

    Validating ``payload`` as ``dict[str, JsonValue]`` and then again as the type's model
    cost more than the rest of the hop; the JSON parser already guarantees JSON values.
    Anything unusual takes the full validation, for its exact error.
    """
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        return HermesEnvelope.model_validate_json(body)  # raises the precise error
    payload = data["payload"]
    envelope = HermesEnvelope.model_validate({**data, "payload": {}})
    return envelope.model_copy(update={"payload": payload})
