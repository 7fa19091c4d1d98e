"""What became of a request, as the client folds its notifications and status reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from dlaas.contracts import Notification, PlanEntry, RequestStatus


@dataclass(frozen=True)
class ReadyFile:
    """A file the user can open now."""

    did: str
    path: str
    pfn: str
    cache_url: str
    bytes: int


@dataclass
class StageResult:
    """What became of a stage request."""

    request_id: UUID
    files_total: int | None = None
    ready: dict[str, ReadyFile] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    completed: bool = False
    reason: str | None = None  # the request as a whole failed
    summary: str | None = None
    plan: list[PlanEntry] = field(default_factory=list)  # a dry run's answer

    @property
    def ok(self) -> bool:
        """Completed with every file ready."""
        return self.completed and not self.failed and self.reason is None

    @property
    def paths(self) -> list[str]:
        """Paths of the ready files, for the next cell to open."""
        return [f.path for f in self.ready.values()]

    def apply(self, note: Notification) -> bool:
        """Fold one notification in; False for a repeat (which changes nothing)."""
        if note.did is not None and (note.did in self.ready or note.did in self.failed):
            return False
        if note.kind in ("completed", "failed") and self.completed:
            return False
        if note.kind == "accepted" and self.files_total is not None:
            return False
        if note.kind == "accepted":
            self.files_total = note.files_total
        elif note.kind in ("file-ready", "file-published") and note.did:
            self.ready[note.did] = ReadyFile(
                note.did,
                note.path or "",
                note.pfn or "",
                note.cache_url or "",
                note.bytes or 0,
            )
        elif note.kind == "file-failed" and note.did:
            self.failed[note.did] = note.reason or "unknown reason"
        elif note.kind in ("failed", "cancelled"):
            self.reason, self.completed = note.reason or note.text, True
        elif note.kind == "completed":
            self.completed, self.summary = True, note.text
            self.files_total = (note.files_ready or 0) + (note.files_failed or 0)
        return True

    def apply_status(self, status: RequestStatus) -> None:
        """Fold a status report in: what is ready and failed so far."""
        if status.state == "planned":
            self.plan, self.completed = list(status.plan), True
            return
        if status.state == "unknown":
            self.reason, self.completed = "no such request of yours", True
            return
        self.files_total = status.files_total
        for entry in status.ready:
            self.ready.setdefault(entry.did, ReadyFile(
                entry.did, entry.path or "", entry.pfn or "", entry.cache_url or "", entry.bytes
            ))  # fmt: skip
        for did, reason in status.failed.items():
            self.failed.setdefault(did, reason)
        if status.state in ("completed", "cancelled", "failed"):
            self.completed = True
            if status.state != "completed":
                self.reason = self.reason or f"request {status.state}"

    @property
    def done(self) -> bool:
        """Nothing more to wait for (completion seen and every file accounted for)."""
        if self.reason is not None:
            return True
        seen = len(self.ready) + len(self.failed)
        return self.completed and seen >= (self.files_total or 0)


Listener = Callable[[Notification, StageResult], None]
