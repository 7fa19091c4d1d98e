"""A publish that loses the broker connection is a transient error (retried, never a dead
letter); TLS settings build a verifying context."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiormq
import pytest

from dlaas.bus import topology
from dlaas.bus.connection import Bus
from dlaas.contracts import RequestAccepted
from dlaas.errors import TransientError
from dlaas.settings import BusSettings


class _LostExchange:
    """An exchange whose connection just went away."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def publish(self, *_: object, **__: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
        aiormq.exceptions.ChannelInvalidStateError("closed"),
        ConnectionResetError(104, "reset"),
    ],
)
async def test_a_publish_on_a_lost_connection_is_transient(error: Exception) -> None:
    bus = Bus(BusSettings(), name="test")
    bus._exchanges = {topology.EVENTS: _LostExchange(error)}  # type: ignore[dict-item]
    event = RequestAccepted.model_validate({
        "request_id": "00000000-0000-0000-0000-000000000001", "user": "alice",
        "rse": "NOTEBOOK", "files_total": 1, "bytes_total": 1, "files_available": 0,
    })  # fmt: skip
    with pytest.raises(TransientError, match="connection lost"):
        await bus.publish(event)


def test_tls_settings_build_a_verifying_context(tmp_path: Path) -> None:
    settings = BusSettings.model_validate(
        {"url": "amqps://u:p@broker.example.org/v", "tls": {"check_hostname": False}}
    )
    context = settings.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED  # never off, whatever else is set
    assert not context.check_hostname
    with pytest.raises(FileNotFoundError):
        BusSettings.model_validate(
            {"url": "amqps://h/", "tls": {"ca_file": tmp_path / "missing.pem"}}
        ).ssl_context()
