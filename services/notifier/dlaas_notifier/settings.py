"""Notifier settings: ``DLAAS_NOTIFIER__*`` environment variables.

The notebook channel needs no settings (the user's routing key and inbox, kept
``DLAAS_BUS__INBOX_TTL_DAYS``). E-mail and webhooks are opt-in per user::

    DLAAS_NOTIFIER__USERS='{"alice": {"email": "alice@example.org",
                                      "webhook": "https://chat.example.org/hooks/..."}}'
    DLAAS_NOTIFIER__SMTP__HOST=smtp.example.org
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from dlaas.settings import ServiceSettings

ExternalChannel = Literal["email", "webhook"]
EXTERNAL_CHANNELS: tuple[ExternalChannel, ...] = ("email", "webhook")


class UserChannels(BaseModel):
    """Where one user wants to hear about their requests besides the notebook."""

    model_config = ConfigDict(frozen=True)

    email: str | None = Field(default=None, description="Address for e-mail summaries")
    webhook: SecretStr | None = Field(
        default=None, description="Mattermost/Slack incoming-webhook URL (a secret)"
    )
    channels: tuple[ExternalChannel, ...] | None = Field(
        default=None,
        description="Channels used when a request names none; default: every one set",
    )

    def address(self, channel: ExternalChannel) -> str | None:
        """Where ``channel`` delivers for this user, None when not configured."""
        if channel == "email":
            return self.email
        return None if self.webhook is None else self.webhook.get_secret_value()

    def defaults(self) -> tuple[ExternalChannel, ...]:
        """Channels of a request that did not choose."""
        wanted = EXTERNAL_CHANNELS if self.channels is None else self.channels
        return tuple(c for c in wanted if self.address(c) is not None)


class SmtpSettings(BaseModel):
    """The SMTP relay e-mails go through."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(default="127.0.0.1", description="SMTP server")
    port: int = Field(default=25, ge=1, le=65535, description="SMTP port")
    username: str | None = Field(
        default=None, description="Login, if the relay wants one"
    )
    password: SecretStr | None = Field(default=None, description="Password of the login")
    starttls: bool = Field(default=False, description="Upgrade with STARTTLS")
    use_tls: bool = Field(default=False, description="Implicit TLS (port 465)")
    sender: str = Field(default="dlaas@localhost", description="From: address")
    timeout_s: float = Field(default=30, gt=0, description="Per-connection timeout")


class NotifierOptions(BaseModel):
    """How the notifier aggregates, rate-limits and retries its channels."""

    model_config = ConfigDict(frozen=True)

    db_url: str = Field(
        default="sqlite+aiosqlite:///dlaas-notifier.db",
        description="Dedupe, aggregation and delivery state; postgresql+asyncpg:// too",
    )
    users: dict[str, UserChannels] = Field(
        default_factory=dict, description="Broker user -> e-mail address and webhook"
    )
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    webhook_timeout_s: float = Field(default=10, gt=0, description="Per-call timeout")
    progress_steps_pct: tuple[int, ...] = Field(
        default=(25, 50, 75), description="Progress told to e-mail/webhook at these steps"
    )
    progress_min_files: int = Field(
        default=20, ge=1, description="Smaller requests get only their summary"
    )
    progress_min_interval_s: float = Field(
        default=600,
        ge=0,
        description="At most one progress message per request this often",
    )
    summary_delay_s: float = Field(
        default=2, ge=0, description="Wait for the last per-file events before summing up"
    )
    slowest_files: int = Field(default=5, ge=0, description="Slowest files in a summary")
    rate_limit_count: int = Field(
        default=30, ge=1, description="Messages per user and channel per window"
    )
    rate_limit_window_s: float = Field(default=3600, gt=0, description="The window")
    retry_delays_s: tuple[float, ...] = Field(
        default=(5, 30, 120, 600, 1800),
        description="Backoff of a failing channel; then the message is given up",
    )
    poll_interval_s: float = Field(
        default=1, gt=0, description="How often due retries are looked for"
    )
    lease_s: float = Field(
        default=120, gt=0, description="A claimed message is retried after this (crash)"
    )
    concurrency: int = Field(default=8, ge=1, description="Sends at once per channel")


class NotifierSettings(ServiceSettings):
    """Everything the notifier reads from its environment."""

    notifier: NotifierOptions = Field(default_factory=NotifierOptions)
