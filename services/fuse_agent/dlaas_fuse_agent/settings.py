"""Fuse agent settings: ``DLAAS_FUSE__*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dlaas.settings import ServiceSettings


class MountSpec(BaseModel):
    """How one RSE appears on this notebook node (the extension's rse_mount_path + path_begins_at)."""

    model_config = ConfigDict(frozen=True)

    rse: str = Field(description="RSE whose files are under this mount")
    mount_path: Path = Field(description="Where the RSE is mounted on the node")
    path_begins_at: int = Field(
        default=0, ge=0, description="Leading PFN path components the mount does not show"
    )


class FuseOptions(BaseModel):
    """The node's mounts and users' views."""

    model_config = ConfigDict(frozen=True)

    mounts: list[MountSpec] = Field(
        default_factory=list, description="Mounts on this node"
    )
    views_root: Path = Field(
        default=Path("/var/lib/dlaas/views"),
        description="Each user's view is views_root/<user>/<scope>/<name>",
    )
    check_timeout_s: float = Field(
        default=5.0, gt=0, description="Readability check timeout"
    )


class FuseAgentSettings(ServiceSettings):
    """Everything the fuse agent reads from its environment."""

    fuse: FuseOptions = Field(default_factory=FuseOptions)
