"""TLS to RabbitMQ by configuration: the right CA connects, a wrong one is refused.

The broker is the fault suite's private node with an ``amqps`` listener whose certificate a CA
made with ``openssl`` signed (``tests/faults/private_rabbit.py``).
"""

from __future__ import annotations

import ssl

import aiormq
import pytest

from dlaas.bus.connection import Bus
from dlaas.settings import BusSettings
from tests.faults.private_rabbit import PrivateRabbit

pytestmark = [pytest.mark.faults, pytest.mark.security]


def _settings(node: PrivateRabbit, **tls: object) -> BusSettings:
    return BusSettings.model_validate({"url": node.tls_url(), "tls": tls})


async def test_services_connect_over_tls_trusting_the_configured_ca(
    private_rabbit: PrivateRabbit,
) -> None:
    certs = private_rabbit.certificates
    assert certs is not None
    bus = await Bus(_settings(private_rabbit, ca_file=certs.ca), name="tls").connect()
    try:
        assert bus.connected
        assert bus.settings.uses_tls
    finally:
        await bus.close()


async def test_a_client_certificate_is_presented_when_configured(
    private_rabbit: PrivateRabbit,
) -> None:
    certs = private_rabbit.certificates
    assert certs is not None
    settings = _settings(
        private_rabbit,
        ca_file=certs.ca,
        cert_file=certs.client_cert,
        key_file=certs.client_key,
    )
    bus = await Bus(settings, name="tls-client-cert").connect()
    try:
        assert bus.connected
    finally:
        await bus.close()


@pytest.mark.parametrize("trust", ["other CA", "system store"])
async def test_a_broker_signed_by_another_ca_is_refused(
    private_rabbit: PrivateRabbit, trust: str
) -> None:
    certs = private_rabbit.certificates
    assert certs is not None
    tls = {"ca_file": certs.other_ca} if trust == "other CA" else {}
    bus = Bus(_settings(private_rabbit, **tls), name="tls-refused")
    with pytest.raises((ssl.SSLError, aiormq.exceptions.AMQPConnectionError)) as caught:
        await bus.connect()
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any("CERTIFICATE_VERIFY_FAILED" in repr(e) for e in chain), chain
    await bus.close()


def test_plain_amqp_needs_no_tls_context() -> None:
    assert BusSettings().ssl_context() is None
    secure = BusSettings.model_validate({"url": "amqps://u:p@broker.example.org/v"})
    context = secure.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
