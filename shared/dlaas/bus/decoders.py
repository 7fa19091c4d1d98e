"""Decoders: bytes of a delivery to a typed model, or an exception the consumer dead-letters."""

from __future__ import annotations

from collections.abc import Collection

from aio_pika.abc import AbstractIncomingMessage

from dlaas.bus.consumer import Decoded, Decoder
from dlaas.contracts.base import Event
from dlaas.contracts.hermes import HermesEnvelope, parse_payload
from dlaas.errors import MessageRejectedError


def events(*models: type[Event]) -> Decoder:
    """Decode dlaas events by the AMQP ``type`` property; other types are refused."""
    by_type = {model.event_type: model for model in models}

    def decode(message: AbstractIncomingMessage) -> Decoded:
        if not message.type:
            raise MessageRejectedError("message has no AMQP type property")
        model = by_type.get(message.type)
        if model is None:
            raise MessageRejectedError(f"unknown event type {message.type!r}")
        return Decoded(message.type, model.model_validate_json(message.body))

    return decode


def hermes(used: Collection[str]) -> Decoder:
    """Decode Rucio hermes messages of the ``used`` types.

    Other valid Rucio types are ignored (acked and counted); a type Rucio does not send or a
    payload of the wrong shape is refused.
    """

    def decode(message: AbstractIncomingMessage) -> Decoded:
        envelope = HermesEnvelope.model_validate_json(message.body)
        try:
            payload = parse_payload(envelope)
        except KeyError:
            raise MessageRejectedError(
                f"unknown hermes event type {envelope.event_type!r}"
            ) from None
        return Decoded(
            envelope.event_type, payload if envelope.event_type in used else None
        )

    return decode
