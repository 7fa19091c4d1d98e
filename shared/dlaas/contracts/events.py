"""dlaas's own events, v1. Routing key ``<producer>.<event_type>``; the type carries the version."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from dlaas.contracts.base import DidStr, Event, InstanceName, NodeName, RequestEvent

MAX_DIDS_PER_REQUEST = 10_000


class RuleRequested(RequestEvent):
    """A user asks for DIDs to be made available at an RSE (published by the client)."""

    event_type: ClassVar[str] = "rule-requested.v1"
    producer: ClassVar[str] = "client"

    dids: list[DidStr] = Field(
        description="Files, datasets or containers, as scope:name",
        min_length=1,
        max_length=MAX_DIDS_PER_REQUEST,
    )
    rse: str = Field(
        description="Destination RSE (the notebook's storage element)", max_length=255
    )
    lifetime_days: float | None = Field(
        default=None, gt=0, description="Rule lifetime; the stager's default when absent"
    )
    activity: str | None = Field(default=None, description="Rucio transfer activity")
    dry_run: bool = Field(
        default=False, description="Only report what would be staged; create nothing"
    )
    instance: InstanceName | None = Field(
        default=None,
        description="Rucio instance the DIDs and the RSE belong to; absent: the default",
    )
    node: NodeName | None = Field(
        default=None,
        description="Node of the notebook that asks: the fuse agent there makes the files "
        "visible. Absent: any agent (one node, or views shared by every node)",
    )
    channels: list[str] | None = Field(
        default=None,
        max_length=8,
        description="Channels besides the notebook (always on): 'email', 'webhook'; "
        "a subset of the user's configured ones. Absent: the user's defaults",
    )


class PublishRequested(RequestEvent):
    """A notebook asks to keep a file it produced: register it and replicate it to the lake."""

    event_type: ClassVar[str] = "publish-requested.v1"
    producer: ClassVar[str] = "client"

    did: DidStr = Field(description="The name the file gets in the lake (scope:name)")
    rse: str = Field(description="The scratch RSE where the file is now")
    pfn: str = Field(description="The file's PFN at that RSE", max_length=4096)
    bytes: int = Field(ge=0, description="File size")
    adler32: str = Field(pattern=r"^[0-9a-f]{8}$", description="adler32, 8 hex digits")
    to_rse: str = Field(description="Long-term RSE (expression) to replicate to")
    lifetime_days: float | None = Field(
        default=None, gt=0, description="Rule lifetime; none: kept until removed"
    )
    instance: InstanceName | None = Field(
        default=None, description="Rucio instance to publish to; absent: the default"
    )


class FilePublished(RequestEvent):
    """A published file is safe: its replica is AVAILABLE at the long-term RSE."""

    event_type: ClassVar[str] = "file-published.v1"
    producer: ClassVar[str] = "stager"

    did: DidStr = Field(description="The file")
    rse: str = Field(description="Where it is now safe")
    pfn: str | None = Field(default=None, description="Its PFN there")
    bytes: int = Field(ge=0, description="File size")


class CancelRequested(RequestEvent):
    """A user withdraws a stage request (published by the client)."""

    event_type: ClassVar[str] = "cancel-requested.v1"
    producer: ClassVar[str] = "client"


class RequestCancelled(RequestEvent):
    """The stager stopped a request and removed the rules no other request needs."""

    event_type: ClassVar[str] = "request-cancelled.v1"
    producer: ClassVar[str] = "stager"

    rules_removed: list[str] = Field(default_factory=list, description="Rules deleted")
    rules_kept: list[str] = Field(
        default_factory=list, description="Rules kept because other requests need them"
    )


class StatusRequested(RequestEvent):
    """A user asks where a request stands (published by the client)."""

    event_type: ClassVar[str] = "status-requested.v1"
    producer: ClassVar[str] = "client"


class ReadyEntry(BaseModel):
    """A ready file in a status report."""

    model_config = ConfigDict(frozen=True)

    did: str = Field(description="The file")
    path: str | None = Field(default=None, description="Where the user opens it")
    pfn: str | None = Field(default=None, description="root:// PFN at the destination")
    cache_url: str | None = Field(default=None, description="URL through XCache")
    bytes: int = Field(default=0, ge=0, description="File size")


class PlanEntry(BaseModel):
    """What one requested DID amounts to (a dry run)."""

    model_config = ConfigDict(frozen=True)

    did: str = Field(description="The requested DID")
    kind: str = Field(
        description="FILE, DATASET or CONTAINER; UNKNOWN when Rucio has none"
    )
    files: int = Field(default=0, ge=0, description="Files it resolves to")
    bytes: int = Field(default=0, ge=0, description="Their bytes")
    available: int = Field(default=0, ge=0, description="Already at the destination")
    reason: str | None = Field(default=None, description="Why Rucio refused it")


class RequestStatus(RequestEvent):
    """Where a request stands, sent to its user only (routing key ``user.<u>.<id>.status``)."""

    event_type: ClassVar[str] = "request-status.v1"
    producer: ClassVar[str] = "stager"

    state: Literal[
        "accepted", "completed", "cancelled", "failed", "unknown", "planned"
    ] = Field(description="The request's state; unknown also for someone else's request")
    plan: list[PlanEntry] = Field(
        default_factory=list, description="Per requested DID, for a dry run"
    )
    rse: str | None = Field(default=None, description="Destination RSE")
    files_total: int = Field(default=0, ge=0, description="Files of the request")
    files_waiting: int = Field(default=0, ge=0, description="Not yet at the destination")
    files_ready: int = Field(default=0, ge=0, description="Files the user can open")
    files_failed: int = Field(default=0, ge=0, description="Files that failed")
    bytes_total: int = Field(default=0, ge=0, description="Bytes of the request")
    bytes_ready: int = Field(default=0, ge=0, description="Bytes the user can open")
    ready: list[ReadyEntry] = Field(
        default_factory=list, description="Ready files (the first 10,000)"
    )
    failed: dict[str, str] = Field(
        default_factory=dict, description="Failed files and why (the first 10,000)"
    )


class RequestAccepted(RequestEvent):
    """The stager created (or found) the rules of a request and knows its files."""

    event_type: ClassVar[str] = "request-accepted.v1"
    producer: ClassVar[str] = "stager"

    rse: str = Field(description="Destination RSE")
    files_total: int = Field(ge=0, description="Files the request resolves to")
    bytes_total: int = Field(ge=0, description="Bytes of those files")
    files_available: int = Field(ge=0, description="Files already at the destination")
    files_failed: int = Field(
        default=0, ge=0, description="DIDs refused at once (unknown)"
    )
    rule_ids: list[str] = Field(
        default_factory=list, description="Rucio rules serving it"
    )


class FileStaged(RequestEvent):
    """A file's replica is AVAILABLE at the destination RSE."""

    event_type: ClassVar[str] = "file-staged.v1"
    producer: ClassVar[str] = "stager"

    did: DidStr = Field(description="The file")
    rse: str = Field(description="RSE holding the replica")
    pfn: str = Field(description="root:// PFN of the replica at the RSE")
    bytes: int = Field(ge=0, description="File size")
    adler32: str | None = Field(default=None, description="Rucio's adler32 checksum")
    dataset: DidStr | None = Field(
        default=None, description="Dataset (scope:name) the file was staged as part of"
    )
    node: NodeName | None = Field(
        default=None,
        description="Node of the notebook that asked (routes file-ready to its fuse agent)",
    )
    instance: InstanceName | None = Field(
        default=None,
        description="Rucio instance of the RSE (RSE names may repeat across instances)",
    )


class FileReady(FileStaged):
    """A staged file with the URL to read it through XCache."""

    event_type: ClassVar[str] = "file-ready.v1"
    producer: ClassVar[str] = "cache_router"

    cache_url: str = Field(description="URL reading the PFN through the chosen XCache")
    cache: str | None = Field(
        default=None, description="The chosen cache, None for origin"
    )


class FileVisible(FileReady):
    """A ready file the user can open at ``path`` (checked readable through the mount)."""

    event_type: ClassVar[str] = "file-visible.v1"
    producer: ClassVar[str] = "fuse_agent"

    path: str = Field(
        description="Where the user sees the file (their view of the mount)"
    )
    mount_path: str = Field(
        description="The file on the mount the view points into; in download mode, the "
        "URL it was copied from"
    )


class FileFailed(RequestEvent):
    """A file of a request cannot be made available."""

    event_type: ClassVar[str] = "file-failed.v1"
    producer: ClassVar[str] = "dlaas"

    did: DidStr = Field(description="The file")
    reason: str = Field(description="Why, in words a user can act on", max_length=2000)
    stage: Literal["rucio", "cache", "mount"] = Field(description="Where it failed")


class RequestCompleted(RequestEvent):
    """Every file of a request is visible or failed."""

    event_type: ClassVar[str] = "request-completed.v1"
    producer: ClassVar[str] = "stager"

    files_ready: int = Field(ge=0, description="Files the user can open")
    files_failed: int = Field(ge=0, description="Files that failed")
    bytes_ready: int = Field(ge=0, description="Bytes of the ready files")
    duration_s: float = Field(ge=0, description="From request to completion")


class RequestFailed(RequestEvent):
    """The request as a whole was refused or cannot proceed (unknown DID, permission, quota)."""

    event_type: ClassVar[str] = "request-failed.v1"
    producer: ClassVar[str] = "stager"

    reason: str = Field(description="Why, in words a user can act on", max_length=2000)


class CacheMiss(Event):
    """An XCache had to fetch a file from its origin."""

    event_type: ClassVar[str] = "cache-miss.v1"
    producer: ClassVar[str] = "xcache"

    cache: str = Field(description="The cache that missed, host:port")
    lfn: str = Field(description="Path the cache was asked for", max_length=4096)
    bytes_missed: int = Field(
        default=0, ge=0, description="Bytes fetched from the origin"
    )


NotificationKind = Literal[
    "accepted",
    "file-ready",
    "file-failed",
    "file-published",
    "completed",
    "failed",
    "cancelled",
    "progress",
]


class Notification(RequestEvent):
    """What the notifier delivers to the user who asked (their queue, their channels)."""

    event_type: ClassVar[str] = "notification.v1"
    producer: ClassVar[str] = "notifier"

    kind: NotificationKind = Field(description="What happened")
    text: str = Field(description="One line for a human", max_length=4000)
    did: str | None = Field(default=None, description="The file, for per-file kinds")
    path: str | None = Field(default=None, description="Where the user opens the file")
    pfn: str | None = Field(default=None, description="root:// PFN at the destination")
    cache_url: str | None = Field(default=None, description="URL through XCache")
    bytes: int | None = Field(default=None, description="File size or bytes in total")
    files_total: int | None = Field(default=None, description="Files of the request")
    files_ready: int | None = Field(
        default=None, description="Files ready so far / at the end"
    )
    files_failed: int | None = Field(default=None, description="Files failed at the end")
    reason: str | None = Field(default=None, description="Why something failed")
    source_event_id: str = Field(description="The event this notification reports")


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        RuleRequested,
        CancelRequested,
        RequestCancelled,
        PublishRequested,
        FilePublished,
        StatusRequested,
        RequestStatus,
        RequestAccepted,
        FileStaged,
        FileReady,
        FileVisible,
        FileFailed,
        RequestCompleted,
        RequestFailed,
        CacheMiss,
        Notification,
    )
}
