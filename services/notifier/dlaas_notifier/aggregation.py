"""What e-mail and webhooks get: progress at steps and one summary per request (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from dlaas.contracts import Notification
from dlaas_notifier.domain import size
from dlaas_notifier.ports import OutMessage
from dlaas_notifier.settings import EXTERNAL_CHANNELS, ExternalChannel, UserChannels

PER_FILE = frozenset({"file-ready", "file-failed", "file-published"})
SUMMARIES = frozenset({"completed", "failed", "cancelled"})
SUMMARY_KEY = "summary"  # one key for every final kind: one summary per request


@dataclass(frozen=True)
class RequestState:
    """What the notifier knows of a request so far."""

    request_id: UUID
    user: str
    started_at: float | None
    files_total: int | None
    files_ready: int
    files_failed: int
    bytes_ready: int
    channels: tuple[ExternalChannel, ...] | None  # chosen by the request, None: defaults

    @property
    def files_done(self) -> int:
        """Files ready or failed."""
        return self.files_ready + self.files_failed


@dataclass(frozen=True)
class FileTime:
    """How long one file took, from the request to being visible (or failing)."""

    did: str
    seconds: float | None
    detail: str | None = None  # why it failed


def fact_key(note: Notification) -> str:
    """The dedupe key of a fact: per file for per-file kinds, else per request and kind."""
    return f"{note.kind}:{note.did}" if note.kind in PER_FILE else note.kind


def outbox_key(note: Notification) -> str:
    """The key that makes a message go out once per channel."""
    if note.kind in SUMMARIES:
        return SUMMARY_KEY
    return note.source_event_id if note.kind == "progress" else fact_key(note)


def channels_for(
    user: UserChannels | None, chosen: Sequence[str] | None
) -> tuple[ExternalChannel, ...]:
    """The external channels of a request: its choice among the user's, else their defaults."""
    if user is None:
        return ()
    if chosen is None:
        return user.defaults()
    return tuple(c for c in EXTERNAL_CHANNELS if c in chosen and user.address(c))


def requested_channels(value: object) -> tuple[ExternalChannel, ...] | None:
    """A request's ``channels`` field read defensively: None when absent or not a list."""
    if not isinstance(value, list | tuple):
        return None
    names = {str(v).lower() for v in value}
    return tuple(c for c in EXTERNAL_CHANNELS if c in names)


def progress_step(
    state: RequestState, steps: Sequence[int], min_files: int
) -> int | None:
    """The highest progress step (percent) reached, None below the first or when done."""
    total = state.files_total
    if not total or total < min_files or state.files_done >= total:
        return None
    percent = 100 * state.files_done / total
    reached = [s for s in steps if percent >= s]
    return max(reached) if reached else None


def progress_note(state: RequestState, step: int) -> Notification:
    """The progress message of a request at ``step`` percent."""
    total = state.files_total or 0
    return Notification(
        request_id=state.request_id,
        user=state.user,
        kind="progress",
        files_total=total,
        files_ready=state.files_ready,
        files_failed=state.files_failed,
        bytes=state.bytes_ready,
        text=f"{step} %: {state.files_ready} of {total} files ready "
        f"({size(state.bytes_ready)}), {state.files_failed} failed",
        source_event_id=f"progress:{step}",
    )


def backoff(attempt: int, delays: Sequence[float]) -> float | None:
    """Delay before retry number ``attempt`` (1-based); None when retries are used up."""
    return delays[attempt - 1] if 1 <= attempt <= len(delays) else None


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def render(
    note: Notification,
    slowest: Sequence[FileTime] = (),
    failed: Sequence[FileTime] = (),
) -> OutMessage:
    """The e-mail/webhook text of a progress or summary notification."""
    short = str(note.request_id)[:8]
    lines = [note.text]
    if slowest:
        lines += ["", "Slowest files:"]
        lines += [f"  {f.did}  {_seconds(f.seconds)}" for f in slowest]
    if failed:
        lines += ["", "Failed files:"]
        lines += [f"  {f.did}: {f.detail or 'unknown reason'}" for f in failed]
    lines += ["", f"Request {note.request_id}"]
    return OutMessage(f"[dlaas] request {short} {note.kind}", "\n".join(lines))
