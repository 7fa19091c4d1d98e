"""A throwaway RabbitMQ vhost with real users, through the management HTTP API."""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.request
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest

SERVICE_USER = "dlaas-test-svc"
USERS = ("alice", "bob")


def need(reason: str) -> None:
    """Skip locally, fail under CI: a missing server in CI is a broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Admin:
    """RabbitMQ's management API as an administrator."""

    api: str  # http://host:15672/api
    user: str
    password: str

    def call(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None


@dataclass(frozen=True)
class Broker:
    """A vhost of our own on the real broker, with a service user and two users."""

    admin: Admin
    host: str
    port: int
    vhost: str

    def url(self, user: str = SERVICE_USER) -> str:
        return (
            f"amqp://{user}:{user}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        )

    def queue(self, name: str) -> dict[str, object]:
        path = f"/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}"
        result = self.admin.call("GET", path)
        assert isinstance(result, dict)
        return result

    def get_messages(self, queue: str, count: int = 50) -> list[dict[str, object]]:
        """Read messages off a queue (they are consumed)."""
        path = f"/queues/{quote(self.vhost, safe='')}/{quote(queue, safe='')}/get"
        body = {"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"}
        result = self.admin.call("POST", path, body)
        assert isinstance(result, list)
        return result


def open_broker() -> Broker:
    """Create the vhost and users; the caller deletes the vhost."""
    url = urlsplit(
        os.environ.get("DLAAS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    host, port = url.hostname or "127.0.0.1", url.port or 5672
    api = os.environ.get("DLAAS_TEST_RABBITMQ_API", f"http://{host}:15672/api")
    if not reachable(host, port):
        need(f"RabbitMQ not reachable at {host}:{port}")
    admin = Admin(api, url.username or "guest", url.password or "guest")
    vhost = f"dlaas-test-{uuid.uuid4().hex[:8]}"
    admin.call("PUT", f"/vhosts/{vhost}")
    for user in (SERVICE_USER, *USERS):
        tags = "impersonator" if user == SERVICE_USER else ""
        admin.call("PUT", f"/users/{user}", {"password": user, "tags": tags})
        admin.call(
            "PUT",
            f"/permissions/{vhost}/{user}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
    admin.call(
        "PUT",
        f"/permissions/{vhost}/{admin.user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    return Broker(admin, host, port, vhost)


def close_broker(broker: Broker) -> None:
    broker.admin.call("DELETE", f"/vhosts/{broker.vhost}")
