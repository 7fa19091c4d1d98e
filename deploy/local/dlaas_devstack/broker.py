"""Provision a RabbitMQ vhost with dlaas's users through the management HTTP API."""

from __future__ import annotations

import base64
import json
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

SERVICE_USER = "dlaas-svc"
ALL = {"configure": ".*", "write": ".*", "read": ".*"}


@dataclass(frozen=True)
class Admin:
    """RabbitMQ's management API as an administrator."""

    api: str = "http://127.0.0.1:15672/api"
    user: str = "guest"
    password: str = "guest"  # noqa: S105  (RabbitMQ's default local administrator)

    def call(self, method: str, path: str, body: object | None = None) -> object:
        """One API call; the decoded JSON answer (None when empty)."""
        if not self.api.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP API URL: {self.api}")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method)  # noqa: S310
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        # generous: vhosts of quorum queues take seconds to create or delete on 2 cores
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            text = response.read()
        return json.loads(text) if text else None


@dataclass(frozen=True)
class Vhost:
    """A vhost with a service user (tag ``impersonator``: it forwards users' validated ids)."""

    admin: Admin
    name: str
    host: str = "127.0.0.1"
    port: int = 5672

    def url(self, user: str = SERVICE_USER) -> str:
        """AMQP URL of ``user`` (local convention: the password is the user name)."""
        return f"amqp://{user}:{user}@{self.host}:{self.port}/{quote(self.name, safe='')}"

    def add_user(self, user: str, *, tags: str = "") -> None:
        """Create (or reset) a user with rights on this vhost."""
        self.admin.call(
            "PUT", f"/users/{quote(user, safe='')}", {"password": user, "tags": tags}
        )
        self.admin.call(
            "PUT", f"/permissions/{quote(self.name, safe='')}/{quote(user, safe='')}", ALL
        )

    def get_messages(self, queue: str, count: int = 50) -> list[dict[str, object]]:
        """Take messages off a queue (for inspection: they are consumed)."""
        path = f"/queues/{quote(self.name, safe='')}/{quote(queue, safe='')}/get"
        body = {"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"}
        result = self.admin.call("POST", path, body)
        return result if isinstance(result, list) else []

    def delete(self) -> None:
        """Delete the vhost and everything in it."""
        self.admin.call("DELETE", f"/vhosts/{quote(self.name, safe='')}")


def create_vhost(
    admin: Admin, name: str, users: tuple[str, ...] = ("alice", "bob")
) -> Vhost:
    """A fresh vhost (recreated if it exists) with the service user and ``users``."""
    vhost = Vhost(admin, name)
    admin.call("DELETE", f"/vhosts/{quote(name, safe='')}") if _exists(
        admin, name
    ) else None
    admin.call("PUT", f"/vhosts/{quote(name, safe='')}")
    admin.call(
        "PUT", f"/permissions/{quote(name, safe='')}/{quote(admin.user, safe='')}", ALL
    )
    vhost.add_user(SERVICE_USER, tags="impersonator")
    for user in users:
        vhost.add_user(user)
    return vhost


def _exists(admin: Admin, name: str) -> bool:
    vhosts = admin.call("GET", "/vhosts")
    return isinstance(vhosts, list) and any(v.get("name") == name for v in vhosts)
