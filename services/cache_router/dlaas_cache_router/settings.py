"""Cache router settings: ``DLAAS_CACHE__*`` environment variables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dlaas.settings import ServiceSettings


class CacheOptions(BaseModel):
    """The XCache instances files are read through."""

    model_config = ConfigDict(frozen=True)

    endpoints: list[str] = Field(
        default_factory=list,
        description="XCache URLs (root://host:port) in forwarding mode; empty: read the origin",
    )


class CacheRouterSettings(ServiceSettings):
    """Everything the cache router reads from its environment."""

    cache: CacheOptions = Field(default_factory=CacheOptions)
