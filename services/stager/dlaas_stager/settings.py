"""Stager settings: ``DLAAS_RUCIO__*`` and ``DLAAS_STAGER__*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from dlaas.settings import ServiceSettings


class RucioSettings(BaseModel):
    """The stager's own service identity at one Rucio instance (never a user's token)."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(default="http://127.0.0.1:8180", description="Rucio REST URL")
    auth_host: str | None = Field(default=None, description="Auth URL; default: host")
    account: str = Field(default="root", description="Service account")
    auth_type: str = Field(default="userpass", description="userpass, x509, oidc, ...")
    username: str | None = Field(default=None, description="userpass login")
    password: SecretStr | None = Field(default=None, description="userpass password")
    client_cert: str | None = Field(default=None, description="x509 certificate path")
    client_key: str | None = Field(default=None, description="x509 key path")
    ca_cert: str | None = Field(default=None, description="CA bundle for https")
    vo: str | None = Field(default=None, description="VO of a multi-VO Rucio")
    timeout_s: float = Field(default=120, description="Per-call HTTP timeout")
    act_as_user: bool = Field(
        default=False,
        description="Create each user's rules authenticated as the user's own Rucio "
        "account with this identity: Rucio grants that only where it maps the identity to "
        "the account, and the service account needs no admin attribute for rules",
    )
    async_rule_min_files: int = Field(
        default=1000,
        ge=1,
        description="Rules over at least this many files are created asynchronously "
        "(Rucio's judge-injector makes their locks): a synchronous add-rule grows "
        "with the files (16 s at 10k, 380 s at 100k) and outlives timeout_s",
    )


class StagerOptions(BaseModel):
    """How the stager makes rules and keeps state."""

    model_config = ConfigDict(frozen=True)

    db_url: str = Field(
        default="sqlite+aiosqlite:///dlaas-stager.db",
        description="State store: SQLite for one replica, postgresql+asyncpg:// for several",
    )
    default_lifetime_days: float = Field(
        default=7, gt=0, description="Rule lifetime default"
    )
    max_lifetime_days: float = Field(
        default=30, gt=0, description="Longest lifetime allowed"
    )
    activity: str = Field(default="User Subscriptions", description="Default activity")
    accounts: dict[str, str] = Field(
        default_factory=dict,
        description="Broker user -> Rucio account; users not listed use their own name",
    )
    unmapped_users: Literal["same-name", "refuse"] = Field(
        default="same-name",
        description="A user missing from accounts: act as the Rucio account of the same "
        "name, or refuse the request",
    )
    allowed_activities: list[str] = Field(
        default_factory=list, description="Activities users may ask for; empty: any"
    )
    grouping: str = Field(default="DATASET", description="Rule grouping")
    watchdog_interval_s: float = Field(
        default=30, gt=0, description="How often rules that owe files are re-checked"
    )
    watchdog_after_s: float = Field(
        default=60, ge=0, description="Requests younger than this are not re-checked"
    )
    default_instance: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Name of the instance in DLAAS_RUCIO__* (requests that name none; "
        "the routing key its hermes publishes with)",
    )
    batch_window_s: float = Field(
        default=0.05,
        ge=0,
        description="longest a transfer-done replica check waits behind a Rucio call in "
        "flight for its RSE (none in flight: asked at once)",
    )
    available_recheck_s: tuple[float, ...] = Field(
        default=(0.5, 1.0, 2.0),
        description="hermes reports a transfer done when Rucio's poller sees it, before "
        "its finisher marks the replica AVAILABLE: ask Rucio again after these waits "
        "(grouped with the other files' questions) before leaving the message to the "
        "bus's retries (whose first delays are longer)",
    )


class StagerSettings(ServiceSettings):
    """Everything the stager reads from its environment."""

    rucio: RucioSettings = Field(
        default_factory=RucioSettings,
        description="The default Rucio instance (named by stager.default_instance)",
    )
    stager: StagerOptions = Field(default_factory=StagerOptions)
    instances: dict[str, RucioSettings] = Field(
        default_factory=dict,
        description="Further Rucio instances by name (the routing key their hermes "
        "publishes with), as JSON",
    )
    instances_file: Path | None = Field(
        default=None,
        description="A JSON file of further instances ({name: settings}), read again "
        "when it changes: an instance is added without restarting the stager",
    )
