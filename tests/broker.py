"""The real broker for tests: a throwaway vhost with real users."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import aio_pika
import pytest

from dlaas.bus import topology
from dlaas_devstack.broker import Admin, Vhost, create_vhost


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


def broker_admin() -> tuple[Admin, str, int]:
    """The administrator of $DLAAS_TEST_AMQP_URL (default: the local broker), its host, port."""
    url = urlsplit(
        os.environ.get("DLAAS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    host, port = url.hostname or "127.0.0.1", url.port or 5672
    if not reachable(host, port):
        need(f"RabbitMQ not reachable at {host}:{port}")
    api = os.environ.get("DLAAS_TEST_RABBITMQ_API", f"http://{host}:15672/api")
    return Admin(api, url.username or "guest", url.password or "guest"), host, port


def open_broker() -> Vhost:
    """A fresh vhost on the test broker, exchanges declared; the caller deletes it."""
    admin, host, port = broker_admin()
    created = create_vhost(admin, f"dlaas-test-{uuid.uuid4().hex[:8]}")
    vhost = Vhost(admin, created.name, host, port)
    # as an operator does (definitions, or a first service start): clients only look them up
    with ThreadPoolExecutor(1) as pool:  # the fixture may be set up inside a running loop
        pool.submit(asyncio.run, _declare_exchanges(vhost.url())).result(timeout=120)
    return vhost


async def _declare_exchanges(url: str) -> None:
    async with await aio_pika.connect(url) as connection:
        await topology.declare_exchanges(await connection.channel())
