"""Fixtures of the operations tests: definitions.json loaded into a throwaway vhost."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dlaas_devstack.broker import Admin
from tests.broker import broker_admin
from tests.ops.tools import ROOT

DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"


@dataclass(frozen=True)
class Imported:
    """definitions.json as loaded: renamed vhost and users, and how to log in as each."""

    admin: Admin
    host: str
    port: int
    vhost: str
    users: dict[str, str]  # name in the file -> name on the broker
    passwords: dict[str, str]  # name in the file -> password

    def url(self, user: str) -> str:
        """AMQP URL of the user named ``user`` in the file."""
        login, password = (
            quote(self.users[user], safe=""),
            quote(self.passwords[user], safe=""),
        )
        return f"amqp://{login}:{password}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"


def throwaway(
    definitions: dict[str, Any], vhost: str, suffix: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The definitions with the vhost renamed and every user given ``suffix``."""
    renamed = json.loads(json.dumps(definitions))
    names = {user["name"]: f"{user['name']}-{suffix}" for user in renamed["users"]}
    for user in renamed["users"]:
        user["name"] = names[user["name"]]
    assert len(renamed["vhosts"]) == 1
    renamed["vhosts"][0]["name"] = vhost
    for key in ("permissions", "topic_permissions", "policies", "exchanges", "queues"):
        for item in renamed.get(key, []):
            item["vhost"] = vhost
            if "user" in item:
                item["user"] = names[item["user"]]
    for binding in renamed.get("bindings", []):
        binding["vhost"] = vhost
    return renamed, names


@pytest.fixture
def imported() -> Iterator[Imported]:
    """deploy/rabbitmq/definitions.json loaded through POST /api/definitions, then removed."""
    admin, host, port = broker_admin()
    suffix = f"ops{uuid.uuid4().hex[:8]}"
    definitions = json.loads(Path(DEFINITIONS).read_text(encoding="utf-8"))
    renamed, names = throwaway(definitions, f"dlaas-{suffix}", suffix)
    passwords = {user["name"]: user["password"] for user in definitions["users"]}
    admin.call("POST", "/definitions", renamed)
    try:
        yield Imported(admin, host, port, f"dlaas-{suffix}", names, passwords)
    finally:
        admin.call("DELETE", f"/vhosts/{quote(f'dlaas-{suffix}', safe='')}")
        for name in names.values():
            admin.call("DELETE", f"/users/{quote(name, safe='')}")
