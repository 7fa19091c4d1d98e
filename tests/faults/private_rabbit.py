"""A RabbitMQ node of a test's own, to restart at will (the machine's broker is shared).

It runs from the installed ``rabbitmq-server`` scripts with everything in a temporary folder:
its own node name, AMQP and distribution ports, Mnesia and logs, Erlang cookie (``HOME``), an
empty env file (the machine's ``rabbitmq-env.conf`` names the shared node), no plugins, and a
``rabbitmq.conf`` with a TLS listener when certificates are given. Durable quorum queues and
persistent messages survive :meth:`PrivateRabbit.restart`, as on a production node.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dlaas_devstack import _proc
from tests.broker import need

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
STARTED = "Server startup complete"


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                   timeout=60)  # fmt: skip


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             cwd=folder)  # fmt: skip


def _signed(folder: Path, name: str, ca: str, ext: str) -> None:
    (folder / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
             "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)  # fmt: skip


def make_certificates(folder: Path) -> Certificates:
    """Self-signed CAs and certificates made with ``openssl`` in ``folder``."""
    if shutil.which("openssl") is None:
        need("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    _ca(folder, "dlaas-test-ca")
    _ca(folder, "other-ca")
    _signed(folder, "server", "dlaas-test-ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth\n")  # fmt: skip
    _signed(folder, "client", "dlaas-test-ca", "extendedKeyUsage=clientAuth\n")
    for key in folder.glob("*.key"):
        key.chmod(0o644)  # the node may run as another user than the test
    return Certificates(
        ca=folder / "dlaas-test-ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
    )


@dataclass
class PrivateRabbit:
    """One private RabbitMQ node under ``workdir``; guest may impersonate (as services)."""

    workdir: Path
    certificates: Certificates | None = None
    node: str = field(
        default_factory=lambda: f"dlaas-fault-{uuid.uuid4().hex[:8]}@localhost"
    )
    port: int = field(default_factory=_proc.free_port)
    dist_port: int = field(default_factory=_proc.free_port)
    tls_port: int = field(default_factory=_proc.free_port)
    child: _proc.Child | None = None
    starts: int = 0

    def url(self, vhost: str = "/") -> str:
        """Plain AMQP URL of guest."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost.replace('/', '%2F')}"

    def tls_url(self, host: str = "localhost") -> str:
        """``amqps://`` URL of guest on the TLS listener."""
        return f"amqps://guest:guest@{host}:{self.tls_port}/%2F"

    def _configure(self) -> dict[str, str]:
        folder = self.workdir
        (folder / "env.conf").write_text("")
        (folder / "enabled_plugins").write_text("[].\n")
        conf = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "default_user = guest",
            "default_pass = guest",
            "default_user_tags.administrator = true",
            "default_user_tags.impersonator = true",
            "loopback_users.guest = true",
        ]
        certs = self.certificates
        if certs is not None:
            conf += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {certs.ca}",
                f"ssl_options.certfile = {certs.server_cert}",
                f"ssl_options.keyfile = {certs.server_key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (folder / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        cookie = folder / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        return {
            "HOME": str(folder),  # the Erlang cookie is read from $HOME
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout: float = 90) -> float:
        """Start the node; seconds until it accepts connections."""
        if not SERVER.exists():
            need(f"rabbitmq-server is not installed ({SERVER})")
        if os.geteuid() != 0:
            need("a private RabbitMQ node is started as root here")
        began = time.monotonic()
        env = {**os.environ, **self._configure()}
        self.starts += 1
        log = self.workdir / f"rabbit.{self.starts}.log"
        log.unlink(missing_ok=True)  # "started" must come from this start
        self.child = _proc.spawn(self.node, [str(SERVER)], log_path=log, env=env)
        child = self.child

        def up() -> bool:
            return not child.alive() or STARTED in log.read_text(errors="replace")

        _proc.wait_until(up, timeout=timeout, what=f"RabbitMQ node {self.node}")
        if not child.alive():
            raise RuntimeError(f"RabbitMQ {self.node} died:\n{_proc.tail(log, 60)}")
        return time.monotonic() - began

    def stop(self, timeout: float = 60) -> None:
        """Stop the node (SIGTERM: a clean shutdown; SIGKILL after ``timeout``)."""
        if self.child is None:
            return
        self.child.signal_group(signal.SIGTERM)
        try:
            self.child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.signal_group(signal.SIGKILL)
            self.child.popen.wait(10)
        self.child.signal_group(signal.SIGKILL)  # nothing of the group may linger
        self.child = None

    def restart(self) -> tuple[float, float]:
        """Stop and start again; seconds down (stop) and seconds to come back up."""
        began = time.monotonic()
        self.stop()
        down = time.monotonic() - began
        return down, self.start()
