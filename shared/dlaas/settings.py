"""Settings every dlaas process shares, read once from ``DLAAS_*`` environment variables."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TlsSettings(BaseModel):
    """How an ``amqps://`` connection checks the broker and, optionally, proves who we are."""

    model_config = ConfigDict(frozen=True)

    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the broker's certificate; unset: the "
        "system's trust store",
    )
    cert_file: Path | None = Field(
        default=None, description="PEM client certificate (mutual TLS); unset: none"
    )
    key_file: Path | None = Field(
        default=None, description="PEM private key of the client certificate"
    )
    check_hostname: bool = Field(
        default=True, description="The certificate must name the host of the URL"
    )

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate (never switched off)."""
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=None if self.ca_file is None else str(self.ca_file),
        )
        context.check_hostname = self.check_hostname
        if self.cert_file is not None:
            context.load_cert_chain(
                self.cert_file, None if self.key_file is None else self.key_file
            )
        return context


class BusSettings(BaseModel):
    """How to reach RabbitMQ and how to treat messages."""

    model_config = ConfigDict(frozen=True)

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="AMQP URL (amqps:// for TLS); the login is the user's identity",
    )
    prefetch: int = Field(default=50, ge=1, description="Unacked messages per consumer")
    handlers: int = Field(
        default=100,
        ge=1,
        description="Handlers running at once per consumer, the events of batches included "
        "(bounds memory and concurrency whatever the batch size)",
    )
    max_message_bytes: int = Field(
        default=1_000_000, ge=1024, description="Larger bodies are dead-lettered"
    )
    batch_max_events: int = Field(
        default=100,
        ge=1,
        description="Events of one kind published in the same moment travel together in "
        "one message, at most this many (a consumer handles each on its own); 1: never",
    )
    retry_delays_s: tuple[float, ...] = Field(
        default=(1.0, 5.0, 30.0, 120.0),
        description="Backoff of transient failures; one retry queue per delay",
    )
    parked_ttl_s: float = Field(
        default=600,
        ge=0,
        description="After its retries a transient failure waits this long in <queue>.parked "
        "and comes back, again and again (an outage delays, never loses); 0: dead-letter it",
    )
    dlq_ttl_days: int = Field(
        default=7, ge=1, description="How long dead letters are kept"
    )
    inbox_ttl_days: float = Field(
        default=7, gt=0, description="How long a user's inbox keeps notifications"
    )
    delivery_limit: int = Field(
        default=20, ge=1, description="Quorum-queue redelivery backstop (crash loops)"
    )
    tls: TlsSettings = Field(
        default_factory=TlsSettings, description="Certificates of amqps:// connections"
    )
    reconnect_interval_s: float = Field(
        default=5.0, gt=0, description="Wait between attempts to reach a lost broker"
    )

    @property
    def uses_tls(self) -> bool:
        """Whether the URL asks for TLS (``amqps://``)."""
        return urlsplit(self.url.get_secret_value()).scheme == "amqps"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``amqps://`` URL; None for plain ``amqp://``."""
        return self.tls.context() if self.uses_tls else None

    @property
    def login(self) -> str:
        """The broker user name in the URL (what RabbitMQ validates ``user_id`` against)."""
        return unquote(urlsplit(self.url.get_secret_value()).username or "guest")

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.url.get_secret_value())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{self.login}@{host}{port}{parts.path}"


class ServiceSettings(BaseSettings):
    """Settings of one dlaas process; services subclass it with their own section."""

    model_config = SettingsConfigDict(
        env_prefix="DLAAS_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    bus: BusSettings = Field(default_factory=BusSettings)
    log_json: bool | None = Field(
        default=None, description="JSON logs; default: not a tty"
    )
    log_level: str = Field(default="INFO", description="Minimum level logged")
    http_host: str = Field(
        default="0.0.0.0", description="Address of /healthz, /readyz, /metrics"
    )
    http_port: int | None = Field(
        default=None, ge=0, le=65535, description="Port of the health server; unset: none"
    )
    grace_s: float = Field(
        default=10.0, ge=0, description="On SIGTERM, wait this long for messages in hand"
    )
