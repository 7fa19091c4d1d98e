"""Cache router settings: ``DLAAS_CACHE__*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from dlaas.settings import ServiceSettings


def _endpoint(value: object) -> object:
    """A bare URL is a forwarding-mode cache."""
    return {"url": value} if isinstance(value, str) else value


class CacheEndpoint(BaseModel):
    """One XCache instance."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(description="root://host:port of the cache")
    origin: str | None = Field(
        default=None,
        description="Direct mode: the origin (root://host:port) the cache fronts, "
        "reached as cache//path; None: forwarding mode, cache//root://origin//path",
    )


CacheRef = Annotated[CacheEndpoint, BeforeValidator(_endpoint)]


class CacheSite(BaseModel):
    """The caches of one site, and the RSEs whose files they serve."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Site name, for logs")
    rses: list[str] = Field(
        default_factory=list,
        description="RSEs this site's caches serve; empty: every RSE no other site names",
    )
    caches: list[CacheRef] = Field(description="The site's caches (URL or object)")


class ProbeOptions(BaseModel):
    """How the router learns which caches are alive (XRootD ``query config version``)."""

    model_config = ConfigDict(frozen=True)

    interval_s: float = Field(
        default=0,
        ge=0,
        description="Seconds between probes of every cache; 0: no probing, "
        "every configured cache is taken as alive",
    )
    timeout_s: float = Field(default=2.0, gt=0, description="One probe's timeout")
    failures_to_dead: int = Field(
        default=2, ge=1, description="Consecutive failed probes that mark a cache dead"
    )


class WarmOptions(BaseModel):
    """Warming a dataset's other files after a miss, within a budget."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = Field(default=True, description="React to cache-miss events")
    max_files: int = Field(
        default=100, ge=0, description="Files warmed per dataset per window"
    )
    max_bytes: int = Field(
        default=20 * 1024**3, ge=0, description="Bytes warmed per dataset per window"
    )
    window_s: float = Field(default=3600, gt=0, description="The budget's time window")
    concurrency: int = Field(default=4, ge=1, description="Files warmed at once")
    timeout_s: float = Field(default=600, gt=0, description="Timeout of one file's warm")
    remember_s: float = Field(
        default=86_400, gt=0, description="How long routed files are remembered"
    )
    remember_files: int = Field(
        default=200_000, ge=1, description="Most routed files remembered"
    )


class MonitorOptions(BaseModel):
    """The caches' pfc monitoring stream (``xrootd.mongstream pfc ... send json``)."""

    model_config = ConfigDict(frozen=True)

    udp_host: str = Field(default="127.0.0.1", description="Address to listen on")
    udp_port: int | None = Field(
        default=None, ge=0, le=65535, description="UDP port; unset: no listener"
    )
    max_pending: int = Field(
        default=10_000, ge=1, description="Misses waiting to be published; more dropped"
    )


class CacheOptions(BaseModel):
    """The XCache instances files are read through."""

    model_config = ConfigDict(frozen=True)

    endpoints: list[CacheRef] = Field(
        default_factory=list,
        description="Caches of the default site (serving every RSE no site names); "
        "URLs (root://host:port) in forwarding mode; none: read the origin",
    )
    sites: list[CacheSite] = Field(
        default_factory=list, description="Further sites, each with its caches"
    )
    probe: ProbeOptions = Field(default_factory=ProbeOptions)
    warm: WarmOptions = Field(default_factory=WarmOptions)
    monitor: MonitorOptions = Field(default_factory=MonitorOptions)

    def all_sites(self) -> list[CacheSite]:
        """The sites, with ``endpoints`` as a site serving every RSE, last."""
        default = [CacheSite(name="default", caches=self.endpoints)]
        return [*self.sites, *(default if self.endpoints else [])]


class CacheRouterSettings(ServiceSettings):
    """Everything the cache router reads from its environment."""

    cache: CacheOptions = Field(default_factory=CacheOptions)
