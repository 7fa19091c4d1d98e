"""Fixtures of the fault suite (its report is in ``report.py``, shared by every test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.private_rabbit import PrivateRabbit, make_certificates


@pytest.fixture(scope="package")
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the fault suite's own (plain and TLS listeners), to restart."""
    folder = tmp_path_factory.mktemp("rabbit")
    node = PrivateRabbit(folder, make_certificates(folder / "certs"))
    try:
        node.start()
        yield node
    finally:
        node.stop()
