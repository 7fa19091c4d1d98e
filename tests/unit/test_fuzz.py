"""Property-based fuzzing of the contracts and of the consumer's decode path (hypothesis).

- Every dlaas event and every modelled hermes payload survives JSON (hermes's by its aliases);
  values are drawn from each field's own type and constraints, so a new field is fuzzed too.
- Garbage (bytes, any JSON, a valid message with one field replaced) either validates or
  raises pydantic's ValidationError: never another exception.
- A delivery with any body, headers, type and content encoding ends, through the consumer,
  as handled, ignored or dead-lettered with a reason: ``on_message`` never raises.
- A DID that validates never names a path outside ``<root>/<scope>/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Literal, TypeVar, Union, cast, get_args, get_origin
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, AwareDatetime, BaseModel, JsonValue, ValidationError
from pydantic.fields import FieldInfo

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import ATTEMPT_HEADER, REASON_HEADER, Consumer, Decoder, Delivery
from dlaas.contracts import EVENT_TYPES, Did, PlanEntry, ReadyEntry
from dlaas.contracts.hermes import HERMES_OTHER_TYPES, HERMES_PAYLOADS, HermesEnvelope
from dlaas.settings import BusSettings

M = TypeVar("M", bound=BaseModel)
# a deeper search: DLAAS_FUZZ_EXAMPLES=5000 python -m pytest tests/unit/test_fuzz.py
EXAMPLES = int(os.environ.get("DLAAS_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # two shared cores: timing says nothing here
    database=None,  # no .hypothesis folder left in the checkout
    derandomize=bool(os.environ.get("CI")),  # CI repeats the same examples: never flaky
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PER_MODEL = settings(FUZZ, max_examples=max(1, EXAMPLES // 6))
EVENTS = sorted(EVENT_TYPES.values(), key=lambda m: m.event_type)
HERMES = sorted(set(HERMES_PAYLOADS.values()), key=lambda m: m.__name__)
MODELS: list[type[BaseModel]] = [
    *EVENTS,
    *HERMES,
    HermesEnvelope,
    Did,
    ReadyEntry,
    PlanEntry,
]

# -- strategies drawn from the models' own fields ------------------------------------------

_SEGMENT = st.from_regex(r"[A-Za-z0-9._+\-:]{1,12}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)
dids = st.builds(
    "{}:{}".format,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,24}", fullmatch=True),
    st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join),
)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, key, None)
            if value is not None:
                found[key] = value
        if isinstance(item, AfterValidator) and item.func.__name__ == "_check_did":
            found["did"] = True
    return found


def _numbers(kind: type, b: dict[str, Any]) -> st.SearchStrategy[Any]:
    low = b.get("ge", b.get("gt"))
    high = b.get("le", b.get("lt"))
    if kind is int:
        low = None if low is None else int(low) + ("gt" in b)
        high = None if high is None else int(high) - ("lt" in b)
        return st.integers(
            -(2**62) if low is None else low, 2**62 if high is None else high
        )
    return st.floats(
        min_value=low, max_value=high, exclude_min="gt" in b, exclude_max="lt" in b,
        allow_nan=False, allow_infinity=False,
    )  # fmt: skip


def _strings(b: dict[str, Any]) -> st.SearchStrategy[str]:
    if b.get("did"):
        return dids
    low, high = b.get("min_length", 0), min(b.get("max_length", 40), 40)
    if "pattern" in b:
        text = st.from_regex(b["pattern"], fullmatch=True)
        return text.filter(lambda s: low <= len(s) <= b.get("max_length", 10**9))
    return st.text(min_size=low, max_size=max(low, high))


def strategy(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:  # noqa: C901, PLR0911
    """Values of one field: its type, narrowed by its constraints."""
    origin, args = get_origin(annotation), get_args(annotation)
    b = _bounds(metadata)
    if origin is Annotated:
        extra = [
            m for a in args[1:] for m in (a.metadata if isinstance(a, FieldInfo) else [a])
        ]
        return strategy(args[0], [*metadata, *extra])
    if origin in (Union, types.UnionType):
        return st.one_of(
            [st.none() if a is type(None) else strategy(a, metadata) for a in args]
        )
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(strategy(args[0], []), min_size=b.get("min_length", 0),
                        max_size=min(b.get("max_length", 4), 4))  # fmt: skip
    if origin is dict:
        return st.dictionaries(strategy(args[0], []), strategy(args[1], []), max_size=4)
    if annotation is JsonValue:
        return json_values
    simple: Mapping[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(), UUID: st.uuids(), type(None): st.none(),
        AwareDatetime: st.datetimes(timezones=_ZONES), datetime: st.datetimes(timezones=_ZONES),
    }  # fmt: skip
    if annotation in simple:
        return simple[annotation]
    if annotation in (int, float):
        return _numbers(annotation, b)
    if annotation is str:
        return _strings(b)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return instances(annotation)
    raise NotImplementedError(f"no strategy for {annotation!r}: add one to this test")


def instances(model: type[M]) -> st.SearchStrategy[M]:
    """Valid instances of a model, optional fields sometimes left out."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        values = strategy(info.annotation, list(info.metadata))
        (fields if info.is_required() else optional)[name] = values
    return st.fixed_dictionaries(fields, optional=optional).map(model.model_validate)


def _dump(instance: BaseModel) -> str:
    """JSON as the producer sends it: hermes payloads by their hyphenated aliases."""
    return instance.model_dump_json(by_alias=True)


# -- contracts -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PER_MODEL
@given(data=st.data())
def test_every_model_survives_json(model: type[BaseModel], data: st.DataObject) -> None:
    instance = data.draw(instances(model))
    assert model.model_validate_json(_dump(instance)) == instance


def _one_field_replaced(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    """A valid message of ``model`` with one field's value replaced by any JSON value."""
    return st.tuples(
        instances(model).map(lambda m: json.loads(_dump(m))),
        st.text(max_size=12) | st.sampled_from(list(model.model_fields)),
        json_values,
    ).map(lambda t: {**t[0], t[1]: t[2]})


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@PER_MODEL
@given(data=st.data())
def test_garbage_is_a_validation_error_and_nothing_else(
    model: type[BaseModel], data: st.DataObject
) -> None:
    garbage = data.draw(
        st.binary(max_size=200) | json_values | _one_field_replaced(model)
    )
    try:
        if isinstance(garbage, bytes):
            model.model_validate_json(garbage)
        else:
            model.model_validate(garbage)
            model.model_validate_json(json.dumps(garbage))
    except ValidationError:
        pass


# -- the consumer's decode path ------------------------------------------------------------


@dataclass
class FakeMessage:
    """The parts of an incoming AMQP message the consumer reads."""

    body: bytes
    headers: dict[str, Any]
    type: str | None
    content_encoding: str | None
    content_type: str | None = "application/json"
    message_id: str | None = "m-1"
    correlation_id: str | None = None
    user_id: str | None = "alice"
    routing_key: str | None = "client.rule-requested.v1"
    app_id: str | None = None
    timestamp: datetime | None = None
    redelivered: bool = False


@dataclass
class FakeAcks:
    acked: list[FakeMessage] = field(default_factory=list)
    rejected: list[FakeMessage] = field(default_factory=list)

    def ack(self, message: FakeMessage) -> None:
        self.acked.append(message)

    async def reject(self, message: FakeMessage) -> None:
        self.rejected.append(message)

    async def drain(self) -> None:
        return None


@dataclass
class FakeBus:
    """Records what the consumer sends where; 1 kB limit so big bodies are easy to draw."""

    settings: BusSettings = field(
        default_factory=lambda: BusSettings(max_message_bytes=1024, retry_delays_s=(1.0,))
    )
    acks: FakeAcks = field(default_factory=FakeAcks)
    sent: list[tuple[str, Any]] = field(default_factory=list)

    async def send_to_queue(self, queue: str, message: Any) -> None:
        self.sent.append((queue, message))


@dataclass
class Outcome:
    handled: list[BaseModel]
    bus: FakeBus


def _deliver(decoder: Decoder, kinds: list[str], message: FakeMessage) -> Outcome:
    handled: list[BaseModel] = []

    async def handler(model: BaseModel, _: Delivery) -> None:
        handled.append(model)

    bus = FakeBus()
    spec = topology.QueueSpec("fuzz", ())
    consumer = Consumer(cast("Bus", bus), spec, decoder, dict.fromkeys(kinds, handler))
    asyncio.run(consumer.on_message(cast("Any", message)))
    return Outcome(handled, bus)


def _assert_settled_once(outcome: Outcome) -> None:
    """Acked exactly once; dead-lettered with a reason, or handled, or ignored."""
    bus = outcome.bus
    assert len(bus.acks.acked) + len(bus.acks.rejected) == 1
    if bus.sent:
        ((queue, copy),) = bus.sent
        assert queue == "fuzz.dlq"
        assert copy.headers[REASON_HEADER]
        assert not outcome.handled
    else:
        assert len(outcome.handled) <= 1


amqp_values = (
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=8)
)
headers = st.dictionaries(
    st.text(max_size=8), amqp_values, max_size=3
) | st.fixed_dictionaries({ATTEMPT_HEADER: amqp_values})
encodings = st.sampled_from([None, "", "identity", "utf-8", "gzip", "br"]) | st.text(
    max_size=8
)
event_types = st.sampled_from([*EVENT_TYPES, None, "", "nonsense.v9"])


@st.composite
def event_bodies(draw: st.DrawFn) -> tuple[str | None, bytes]:
    """(AMQP type, body): valid events of their type or another, garbage, huge bodies."""
    model = draw(st.sampled_from(EVENTS))
    valid = draw(instances(model)).model_dump_json().encode()
    body = draw(
        st.just(valid)
        | st.just(valid + b" " * 1024)
        | st.binary(max_size=300)
        | _one_field_replaced(model).map(lambda d: json.dumps(d).encode())
    )
    kind = draw(st.just(model.event_type) | event_types)
    return kind, body


@FUZZ
@given(typed_body=event_bodies(), headers=headers, encoding=encodings)
def test_any_event_delivery_is_handled_or_dead_lettered_with_a_reason(
    typed_body: tuple[str | None, bytes], headers: dict[str, Any], encoding: str | None
) -> None:
    kind, body = typed_body
    message = FakeMessage(body, headers, kind, encoding)
    outcome = _deliver(decoders.events(*EVENTS), list(EVENT_TYPES), message)
    _assert_settled_once(outcome)
    if outcome.handled:
        assert EVENT_TYPES[str(kind)] is type(outcome.handled[0])


_HERMES_TYPES = sorted({*HERMES_PAYLOADS, *HERMES_OTHER_TYPES})


@st.composite
def hermes_bodies(draw: st.DrawFn) -> bytes:
    """Hermes envelopes of every type with valid or garbage payloads, and plain garbage."""
    event_type = draw(
        st.sampled_from([*_HERMES_TYPES, "no_such_type"]) | st.text(max_size=70)
    )
    model = HERMES_PAYLOADS.get(event_type)
    payload = draw(
        json_objects
        | (
            instances(model).map(lambda m: json.loads(_dump(m)))
            if model
            else json_objects
        )
        | json_values
    )
    envelope = {"event_type": event_type, "payload": payload, "created_at": "2026-01-01"}
    return draw(st.just(json.dumps(envelope).encode()) | st.binary(max_size=200))


@FUZZ
@given(body=hermes_bodies(), headers=headers, encoding=encodings)
def test_any_hermes_delivery_is_handled_ignored_or_dead_lettered(
    body: bytes, headers: dict[str, Any], encoding: str | None
) -> None:
    used = ["transfer-done", "transfer-failed", "rule_ok", "datasetlock_ok"]
    message = FakeMessage(body, headers, None, encoding, routing_key="local")
    outcome = _deliver(decoders.hermes(used), used, message)
    _assert_settled_once(outcome)


# -- DIDs ----------------------------------------------------------------------------------

TRICKS = [
    "..",
    "../x",
    "a/../../x",
    "/etc/passwd",
    "a\x00b",
    "a\nb",
    "a\\..\\b",
    "~/x",
    "a b",
    ".",
    "./",
    "a/.",
    "a//b",
    "a/",
]


@pytest.mark.parametrize("name", TRICKS)
def test_did_path_tricks_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="DID"):
        Did.parse(f"user.alice:{name}")


@pytest.mark.parametrize("did", ["user.alice:f\n", "user.alice\n:f", ":f", "user.alice:"])
def test_dids_with_trailing_newlines_or_empty_parts_are_refused(did: str) -> None:
    with pytest.raises(ValueError, match="DID"):
        Did.parse(did)


@settings(FUZZ, max_examples=3 * EXAMPLES)
@given(
    st.text(alphabet=st.sampled_from("ab./:\\\x00\n -~"), max_size=12)
    | st.text(max_size=12)
)
def test_a_valid_did_stays_below_its_scope_folder(text: str) -> None:
    try:
        did = Did.parse(f"user.alice:{text}")
    except ValueError:
        return
    scope_dir = f"/views/alice/{did.scope}"
    path = posixpath.normpath(posixpath.join(scope_dir, did.name))
    assert path.startswith(scope_dir + "/")
    assert "\x00" not in did.name
    assert "\n" not in did.name
