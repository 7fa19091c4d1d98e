"""Fuse agent settings: ``DLAAS_FUSE__*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlaas.contracts.base import NodeName
from dlaas.settings import ServiceSettings

# Given to every xrootdfs: without them a dead server hangs callers for minutes, and a
# mount used while its server was down keeps failing after the server is back
# (StreamErrorWindow: the client remembers the failed connection for 30 min).
XROOTDFS_ENV = {
    "XRD_CONNECTIONWINDOW": "2",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "10",
    "XRD_STREAMTIMEOUT": "10",
    "XRD_TIMEOUTRESOLUTION": "1",
    "XRD_STREAMERRORWINDOW": "1",
}


class MountSpec(BaseModel):
    """How one RSE appears on this notebook node (the extension's rse_mount_path + path_begins_at)."""

    model_config = ConfigDict(frozen=True)

    rse: str = Field(description="RSE whose files are under this mount")
    instance: str | None = Field(
        default=None,
        description="Rucio instance of the RSE, when RSE names repeat across instances; "
        "None: any",
    )
    mount_path: Path = Field(description="Where the RSE is mounted on the node")
    path_begins_at: int = Field(
        default=0, ge=0, description="Leading PFN path components the mount does not show"
    )
    source: str | None = Field(
        default=None,
        description="xrootdfs source (root://host:port//dir) the agent mounts, watches "
        "and remounts; None: mount_path is a directory kept by someone else",
    )
    probe_path: str = Field(
        default="",
        description="Relative path the watcher lists (directory) or reads (file) to "
        "check the mount; empty: the mount's root",
    )

    @field_validator("probe_path")
    @classmethod
    def _inside(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/") or "\0" in value:
            raise ValueError("probe_path must be a relative path inside the mount")
        return value


class DownloadSpec(BaseModel):
    """An RSE this node cannot mount: its ready files are copied into the view over XRootD."""

    model_config = ConfigDict(frozen=True)

    rse: str = Field(description="RSE whose files are downloaded")
    instance: str | None = Field(
        default=None, description="Rucio instance of the RSE; None: any"
    )
    read_from: Literal["cache", "origin"] = Field(
        default="cache",
        description="Read through the file's XCache URL, or straight from its PFN",
    )
    timeout_s: float = Field(
        default=3600.0, gt=0, description="Longest one copy may take"
    )
    max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Bigger files are refused (the node's disk); None: no limit",
    )


class WatchOptions(BaseModel):
    """How the agent keeps its xrootdfs mounts healthy."""

    model_config = ConfigDict(frozen=True)

    interval_s: float = Field(default=5.0, gt=0, description="Seconds between checks")
    timeout_s: float = Field(
        default=5.0, gt=0, description="A check that takes longer fails"
    )
    failures_to_remount: int = Field(
        default=2, ge=1, description="Failed checks in a row before a remount"
    )
    backoff_s: float = Field(
        default=1.0, gt=0, description="First wait between remounts of a broken mount"
    )
    max_backoff_s: float = Field(
        default=60.0, gt=0, description="Longest wait between remounts"
    )
    mount_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a mount may take to answer"
    )
    xrootdfs: str = Field(default="xrootdfs", description="The xrootdfs command")
    fusermount: str = Field(default="fusermount3", description="The fusermount command")
    log_dir: Path | None = Field(
        default=None, description="xrootdfs logs go to <log_dir>/<mount>.log; None: ours"
    )


class FuseOptions(BaseModel):
    """The node's mounts and users' views."""

    model_config = ConfigDict(frozen=True)

    node: NodeName | None = Field(
        default=None,
        description="The node this agent runs on (Kubernetes: spec.nodeName through the "
        "downward API); it takes the files of requests made by notebooks on this node",
    )
    take_unrouted: bool = Field(
        default=True,
        description="Also take files of requests that name no node (competing with the "
        "other agents): right for one node, or views every node shares",
    )
    mounts: list[MountSpec] = Field(
        default_factory=list, description="Mounts on this node"
    )
    downloads: list[DownloadSpec] = Field(
        default_factory=list,
        description="RSEs not mounted here: ready files are copied into the view "
        "(adler32 verified) instead of linked",
    )
    views_root: Path = Field(
        default=Path("/var/lib/dlaas/views"),
        description="Each user's view is views_root/<user>/<scope>/<name>",
    )
    check_timeout_s: float = Field(
        default=5.0, gt=0, description="Readability check timeout"
    )
    watch: WatchOptions = Field(default_factory=WatchOptions)


class FuseAgentSettings(ServiceSettings):
    """Everything the fuse agent reads from its environment."""

    fuse: FuseOptions = Field(default_factory=FuseOptions)
