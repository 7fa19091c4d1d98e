"""Event contracts: validation, versions, and hermes payloads exactly as Rucio sends them."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from pydantic import ValidationError

from dlaas.bus import topology
from dlaas.contracts import EVENT_TYPES, Did, FileReady, RuleRequested
from dlaas.contracts.hermes import (
    DatasetLockOk,
    HermesEnvelope,
    RuleOk,
    TransferFinished,
    TransferQueued,
    parse_payload,
)

# Bodies as hermes sent them in the verified local stand-up (../shared/facts/rucio-local.md).
TRANSFER_DONE = {
    "event_type": "transfer-done",
    "payload": {
        "activity": "User Subscriptions",
        "request-id": "0f5e",
        "duration": 0,
        "checksum-adler": "0cc737eb",
        "checksum-md5": None,
        "file-size": 1024,
        "bytes": 1024,
        "guid": None,
        "previous-request-id": None,
        "protocol": "mock",
        "scope": "user.alice",
        "name": "g1.root",
        "dataset": "ds2",
        "datasetScope": "user.alice",
        "src-type": "DISK",
        "src-rse": "ORIGIN",
        "src-url": "mock://127.0.0.1:0/data/origin/user/alice/6d/15/g1.root",
        "dst-type": "DISK",
        "dst-rse": "NOTEBOOK",
        "dst-url": "mock://127.0.0.1:0/data/notebook/user/alice/6d/15/g1.root",
        "reason": "",
        "transfer-endpoint": "mock://localhost",
        "transfer-id": "x",
        "transfer-link": "",
        "created_at": None,
        "submitted_at": "2026-11-23 10:00:00",
        "started_at": "2026-11-23 10:00:00",
        "transferred_at": "2026-11-23 10:00:01",
        "tool-id": "rucio-conveyor",
        "account": "alice",
        "datatype": None,
    },
    "created_at": "2026-11-23 10:00:01.123456",
}


def test_every_event_type_is_versioned_and_unique() -> None:
    assert all(key.endswith(".v1") for key in EVENT_TYPES)
    keys = [cls.routing_key() for cls in EVENT_TYPES.values()]
    assert len(set(keys)) == len(keys)


def test_every_field_is_described() -> None:
    for cls in EVENT_TYPES.values():
        schema = cls.model_json_schema()
        undocumented = [
            k for k, v in schema["properties"].items() if "description" not in v
        ]
        assert not undocumented, (cls.__name__, undocumented)


def _request(**overrides: object) -> RuleRequested:
    fields: dict[str, object] = {
        "request_id": uuid4(),
        "user": "alice",
        "dids": ["user.alice:ds2"],
        "rse": "NOTEBOOK",
    }
    return RuleRequested.model_validate(fields | overrides)


def test_rule_requested_round_trips() -> None:
    event = _request(lifetime_days=2)
    assert RuleRequested.model_validate_json(event.model_dump_json()) == event


@pytest.mark.parametrize(
    "did",
    [
        "nocolon",
        ":name",
        "scope:",
        "scope:../etc/passwd",
        "scope:/abs",
        "sc/ope:x",
        "scope:a/../../b",
        "scope:\0",
        "s" * 30 + ":x",
    ],
)
def test_invalid_dids_are_refused(did: str) -> None:
    with pytest.raises(ValidationError):
        _request(dids=[did])


@pytest.mark.parametrize("user", ["", "a b", "user.#", "*", "x" * 200])
def test_user_names_that_could_widen_a_topic_binding_are_refused(user: str) -> None:
    with pytest.raises(ValidationError):
        _request(user=user)


def test_unknown_fields_are_tolerated() -> None:
    body = json.loads(_request().model_dump_json()) | {"added_in_a_later_minor": 1}
    RuleRequested.model_validate(body)


def test_did_parses() -> None:
    did = Did.parse("user.alice:data/f1.root")
    assert (did.scope, did.name, str(did)) == (
        "user.alice",
        "data/f1.root",
        "user.alice:data/f1.root",
    )


def test_file_ready_extends_file_staged() -> None:
    ready = FileReady(
        request_id=uuid4(),
        user="alice",
        did="s:n",
        rse="R",
        pfn="root://h//p",
        bytes=1,
        cache_url="root://c//root://h//p",
    )
    assert ready.routing_key() == "cache_router.file-ready.v1"


def test_ready_files_are_routed_to_the_node_that_asked() -> None:
    assert topology.file_ready_routing_key(None) == "cache_router.file-ready.v1"
    node = "ip-10-0-1-2.ec2.internal"
    key = topology.file_ready_routing_key(node)
    assert key == "cache_router.file-ready.v1.ip-10-0-1-2~ec2~internal"  # one topic word
    spec = topology.fuse_agent_node_files(node)
    assert spec.name == f"fuse_agent.files.node.{node}"
    assert spec.bindings == ((topology.EVENTS, key),)
    # the shared queue's exact binding never takes a node's files
    assert topology.FUSE_AGENT_FILES.bindings == (
        (topology.EVENTS, "cache_router.file-ready.v1"),
    )
    for bad in ("Node_A", "-a", "a" * 254, "a/b", "a b"):
        with pytest.raises(ValidationError):
            RuleRequested(request_id=uuid4(), user="u", dids=["s:n"], rse="R", node=bad)


def test_transfer_done_as_rucio_sends_it() -> None:
    envelope = HermesEnvelope.model_validate_json(json.dumps(TRANSFER_DONE))
    payload = parse_payload(envelope)
    assert isinstance(payload, TransferFinished)
    assert (payload.scope, payload.name, payload.dst_rse) == (
        "user.alice",
        "g1.root",
        "NOTEBOOK",
    )
    assert payload.dataset_scope == "user.alice"
    assert payload.checksum_adler == "0cc737eb"


def test_rule_messages_as_rucio_sends_them() -> None:
    ok = parse_payload(
        HermesEnvelope(
            event_type="rule_ok",
            payload={"scope": "user.alice", "name": "ds2", "rule_id": "abc"},
        )
    )
    lock = parse_payload(
        HermesEnvelope(
            event_type="datasetlock_ok",
            payload={
                "scope": "user.alice",
                "name": "ds2",
                "rse": "NOTEBOOK",
                "rse_id": "1",
                "rule_id": "abc",
            },
        )
    )
    queued = parse_payload(
        HermesEnvelope(
            event_type="transfer-queued",
            payload={
                "request-id": "r",
                "scope": "s",
                "name": "n",
                "dst-rse": "R",
                "rule-id": "abc",
            },
        )
    )
    assert isinstance(ok, RuleOk)
    assert isinstance(lock, DatasetLockOk)
    assert lock.rse == "NOTEBOOK"
    assert isinstance(queued, TransferQueued)
    assert queued.rule_id == "abc"


def test_known_unused_hermes_types_are_ignored_and_unknown_ones_refused() -> None:
    assert parse_payload(HermesEnvelope(event_type="create_dts", payload={})) is None
    with pytest.raises(KeyError):
        parse_payload(HermesEnvelope(event_type="no-such-type", payload={}))
    with pytest.raises(ValidationError):
        parse_payload(HermesEnvelope(event_type="rule_ok", payload={"scope": "s"}))
