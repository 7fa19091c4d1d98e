"""Fixtures shared by every test: the real broker (a throwaway vhost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker import Broker, close_broker, open_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A vhost of our own on the real RabbitMQ, deleted at the end of the session."""
    opened = open_broker()
    yield opened
    close_broker(opened)
