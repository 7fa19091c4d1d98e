"""Fixtures shared by every test: the real broker (a throwaway vhost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dlaas_devstack.broker import Vhost
from tests.broker import open_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[Vhost]:
    """A vhost of our own on the real RabbitMQ, deleted at the end of the session."""
    opened = open_broker()
    yield opened
    opened.delete()
