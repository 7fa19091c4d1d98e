"""Rucio's hermes messages, modelled exactly as hermes sends them (hyphenated keys as aliases).

Envelope: ``{"event_type": "<lower-case>", "payload": {...}, "created_at": "<str>"}``, sent over
STOMP to one destination for every type. Only the payloads dlaas acts on are modelled; the other
types Rucio emits are known by name so that they are acked and counted, not dead-lettered.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Hermes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class HermesEnvelope(_Hermes):
    """The body hermes sends for every message."""

    event_type: str = Field(description="Lower-cased Rucio message type", max_length=64)
    payload: dict[str, JsonValue] = Field(description="Type-specific payload")
    created_at: str | None = Field(
        default=None, description="When Rucio queued it (string)"
    )


class _Transfer(_Hermes):
    request_id: str = Field(alias="request-id", description="Rucio request id")
    scope: str = Field(description="File scope")
    name: str = Field(description="File name")
    dst_rse: str = Field(alias="dst-rse", description="Destination RSE")
    activity: str | None = Field(default=None, description="Transfer activity")
    bytes: int | None = Field(default=None, description="File size")
    checksum_adler: str | None = Field(
        default=None, alias="checksum-adler", description="adler32"
    )


class TransferQueued(_Transfer):
    """``transfer-queued``: the only transfer message that names the rule."""

    rule_id: str | None = Field(default=None, alias="rule-id", description="Rule id")


class TransferSubmitted(_Transfer):
    """``transfer-submitted``: handed to the transfer tool."""

    src_rse: str | None = Field(default=None, alias="src-rse", description="Source RSE")


class TransferFinished(_Transfer):
    """``transfer-done``/``-failed``/``-lost``/``-submission_failed``: no rule id."""

    src_rse: str | None = Field(default=None, alias="src-rse", description="Source RSE")
    dst_url: str | None = Field(default=None, alias="dst-url", description="TPC URL")
    reason: str | None = Field(default=None, description="Failure reason, if any")
    dataset: str | None = Field(default=None, description="Parent dataset name")
    dataset_scope: str | None = Field(
        default=None, alias="datasetScope", description="Parent dataset scope"
    )


class RuleOk(_Hermes):
    """``rule_ok``: a rule created with notify Y reached OK."""

    scope: str = Field(description="Rule DID scope")
    name: str = Field(description="Rule DID name")
    rule_id: str = Field(description="Rule id")
    vo: str | None = Field(default=None, description="VO, only when not the default")


class RuleProgress(RuleOk):
    """``rule_progress``: notify P steps."""

    progress: int = Field(ge=0, le=100, description="Percent done")


class DatasetLockOk(RuleOk):
    """``datasetlock_ok``: the dataset lock at one RSE is OK."""

    rse: str = Field(description="RSE of the lock")
    rse_id: str | None = Field(default=None, description="RSE id")


HERMES_PAYLOADS: dict[str, type[_Hermes]] = {
    "transfer-queued": TransferQueued,
    "transfer-submitted": TransferSubmitted,
    "transfer-done": TransferFinished,
    "transfer-failed": TransferFinished,
    "transfer-lost": TransferFinished,
    "transfer-submission_failed": TransferFinished,
    "rule_ok": RuleOk,
    "rule_progress": RuleProgress,
    "datasetlock_ok": DatasetLockOk,
}

# Valid Rucio types dlaas has no use for: acked and counted, never dead-lettered.
HERMES_OTHER_TYPES: frozenset[str] = frozenset(
    {
        "create_dts",
        "create_cnt",
        "register_dts",
        "register_cnt",
        "erase",
        "erase_cnt",
        "detach",
        "open",
        "close",
        "incomplete",
        "lost",
        "email",
        "stagein-queued",
        "stagein-submitted",
        "stagein-done",
        "stagein-failed",
        "stagein-lost",
        "stagein-submission_failed",
        "transfer-preparing",
        "stagein-preparing",
        "transfer-waiting",
        "transfer-submittted",
        "deletion-done",
        "deletion-failed",
        "deletion-not-found",
        "deletion-planned",
        "rule_progress_stuck",
        "replica-recovered",
    }
)


def parse_payload(envelope: HermesEnvelope) -> _Hermes | None:
    """Validate the payload of a type dlaas uses; None for a known type it ignores.

    Raises:
        KeyError: the type is not one Rucio sends.
        pydantic.ValidationError: the payload has the wrong shape for its type.
    """
    model = HERMES_PAYLOADS.get(envelope.event_type)
    if model is None:
        if envelope.event_type in HERMES_OTHER_TYPES:
            return None
        raise KeyError(envelope.event_type)
    payload: dict[str, Any] = envelope.payload
    return model.model_validate(payload)
