"""The committed AsyncAPI document is what the contracts and the topology say, and valid 3.0."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dlaas import asyncapi
from dlaas.bus import batch, topology
from dlaas.contracts import EVENT_TYPES
from dlaas.contracts.hermes import HERMES_PAYLOADS
from tests.ops.tools import need, which

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
SPEC_PACKAGE = "@asyncapi/specs"  # npm: the AsyncAPI JSON schemas, one per spec version


def test_committed_document_is_up_to_date() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == asyncapi.render(), (
        "docs/asyncapi.yaml is stale: run `python -m dlaas.asyncapi > docs/asyncapi.yaml`"
    )


def test_yaml_reads_back_as_the_document() -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(asyncapi.render()) == json.loads(
        json.dumps(asyncapi.document())
    )


def test_every_event_type_and_hermes_type_has_a_message() -> None:
    messages = asyncapi.document()["components"]["messages"]
    types = {
        m["bindings"]["amqp"]["messageType"] for m in messages.values() if "bindings" in m
    }
    assert types == set(EVENT_TYPES) | {batch.BATCH_TYPE}  # batches on every channel
    for event_type in HERMES_PAYLOADS:
        assert asyncapi.hermes_message_name(event_type) in messages


def test_every_queue_binding_receives_at_least_one_channel() -> None:
    operations = asyncapi.document()["operations"].values()
    received = {
        (op["x-dlaas-queue"], op["x-dlaas-binding-key"])
        for op in operations
        if op["action"] == "receive"
    }
    for spec in topology.WORK_QUEUES:
        for _, key in spec.bindings:
            assert (spec.name, key) in received, (
                f"{spec.name} bound to {key} gets nothing"
            )


def test_references_resolve() -> None:
    doc = json.loads(json.dumps(asyncapi.document()))

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        target: object = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict)
            assert part in target, f"dangling {ref}"
            target = target[part]


@pytest.mark.parametrize(
    ("pattern", "address", "matches"),
    [
        ("*.file-failed.v1", "dlaas.file-failed.v1", True),
        ("*.file-failed.v1", "a.b.file-failed.v1", False),
        ("#", "{instance}", True),
        ("user.*.*", "user.{user}.{request_id}", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("stager.file-staged.v1", "stager.file-staged.v2", False),
    ],
)
def test_topic_matching(pattern: str, address: str, matches: bool) -> None:
    assert asyncapi.topic_matches(pattern, address) is matches


def _spec_schema() -> Path | None:
    npm = which("npm")
    if npm is None:
        return None
    root = subprocess.run(
        [npm, "root", "-g"], capture_output=True, text=True, check=False, timeout=60
    ).stdout.strip()
    path = Path(root) / SPEC_PACKAGE / "schemas" / "3.0.0-without-$id.json"
    return path if path.is_file() else None


def test_document_is_valid_asyncapi_3() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = _spec_schema()
    if schema_path is None:
        need(f"npm package {SPEC_PACKAGE} not installed globally (npm install -g)")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = json.loads(json.dumps(asyncapi.document()))
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)
    ]
    assert not errors, "\n".join(errors)
