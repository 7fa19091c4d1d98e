"""What the user is told: one notification per event, in words."""

from __future__ import annotations

from dlaas.contracts import (
    FileFailed,
    FilePublished,
    FileVisible,
    Notification,
    RequestAccepted,
    RequestCancelled,
    RequestCompleted,
    RequestEvent,
    RequestFailed,
)

_KILO = 1000


def size(n: int) -> str:
    """A byte count for people (decimal units)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < _KILO:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= _KILO
    return f"{value:.1f} TB"


def notification_for(event: RequestEvent) -> Notification:  # noqa: PLR0911  (one per type)
    """The notification reporting ``event`` to its user."""
    common = {
        "request_id": event.request_id,
        "user": event.user,
        "source_event_id": str(event.event_id),
    }
    match event:
        case RequestAccepted():
            return Notification(
                **common,
                kind="accepted",
                files_total=event.files_total,
                bytes=event.bytes_total,
                files_ready=0,
                text=f"{event.files_total} files ({size(event.bytes_total)}) requested at "
                f"{event.rse}, {event.files_available} already there",
            )
        case FileVisible():
            return Notification(
                **common,
                kind="file-ready",
                did=event.did,
                path=event.path,
                pfn=event.pfn,
                cache_url=event.cache_url,
                bytes=event.bytes,
                text=f"{event.did} is ready at {event.path}",
            )
        case FilePublished():
            return Notification(
                **common,
                kind="file-published",
                did=event.did,
                pfn=event.pfn,
                bytes=event.bytes,
                text=f"{event.did} is safe at {event.rse}",
            )
        case FileFailed():
            return Notification(
                **common,
                kind="file-failed",
                did=event.did,
                reason=event.reason,
                text=f"{event.did} failed: {event.reason}",
            )
        case RequestCompleted():
            return Notification(
                **common,
                kind="completed",
                files_ready=event.files_ready,
                files_failed=event.files_failed,
                bytes=event.bytes_ready,
                text=f"{event.files_ready} files ready ({size(event.bytes_ready)}), "
                f"{event.files_failed} failed, in {event.duration_s:.1f} s",
            )
        case RequestCancelled():
            return Notification(
                **common,
                kind="cancelled",
                text=f"request cancelled: {len(event.rules_removed)} rules removed, "
                f"{len(event.rules_kept)} kept for other requests",
            )
        case RequestFailed():
            return Notification(
                **common,
                kind="failed",
                reason=event.reason,
                text=f"request failed: {event.reason}",
            )
    raise TypeError(f"no notification for {type(event).__name__}")
