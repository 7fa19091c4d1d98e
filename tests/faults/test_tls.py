"""TLS to RabbitMQ and to Rucio by configuration: the right CA connects, a wrong one is refused.

The broker is the fault suite's private node with an ``amqps`` listener whose certificate a CA
made with ``openssl`` signed (``tests/faults/private_rabbit.py``); Rucio is a local HTTPS
server with a certificate of the same CA, called through the stager's real adapter.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiormq
import pytest

from dlaas.bus.connection import Bus
from dlaas.errors import TransientError
from dlaas.settings import BusSettings
from dlaas_stager.adapters.rucio import RucioCatalog
from dlaas_stager.settings import RucioSettings
from tests.faults.private_rabbit import Certificates, PrivateRabbit, make_certificates

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


class _FakeRucio(BaseHTTPRequestHandler):
    """Just enough of Rucio's REST API for a token and one DID, over HTTPS."""

    def do_GET(self) -> None:
        if self.path.startswith("/auth/userpass"):
            expires = time.strftime(
                "%a, %d %b %Y %H:%M:%S UTC", time.gmtime(time.time() + 3600)
            )
            self._answer(b"", {"X-Rucio-Auth-Token": "tls-token",
                               "X-Rucio-Auth-Token-Expires": expires})  # fmt: skip
        else:
            self._answer(
                json.dumps({"type": "FILE", "scope": "s", "name": "f"}).encode(), {}
            )

    def _answer(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client's kept-alive connection must not hold the teardown
    block_on_close = False


@pytest.fixture(scope="module")
def https_rucio(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Certificates]]:
    """A fake Rucio REST server on https://localhost:<port> with a certificate of our CA."""
    certs = make_certificates(tmp_path_factory.mktemp("https-rucio"))
    server = _Server(("127.0.0.1", 0), _FakeRucio)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}", certs
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_stager_reaches_rucio_over_https_trusting_its_ca_cert(
    https_rucio: tuple[str, Certificates], trusted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    url, certs = https_rucio
    settings = RucioSettings.model_validate({
        "host": url, "username": "ddmlab", "password": "secret",
        "ca_cert": str(certs.ca if trusted else certs.other_ca),
    })  # fmt: skip
    catalog = RucioCatalog(settings)
    if trusted:
        assert await catalog.did_kind("s:f") == "FILE"
    else:
        with pytest.raises(TransientError, match="Cannot connect"):
            await catalog.did_kind("s:f")
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # rucio-clients says why
