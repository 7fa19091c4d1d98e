"""Where a file is on the mount and where the user sees it: pure path arithmetic, checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from dlaas.errors import PermanentError

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")  # NUL, control characters, a backslash


def _safe_parts(text: str, what: str) -> list[str]:
    if _UNSAFE.search(text):
        raise PermanentError(
            f"{what} {text[:80]!r} contains a NUL, a control character or a backslash"
        )
    parts = [p for p in text.split("/") if p]
    if text.startswith("/") or any(p in {".", ".."} for p in parts) or not parts:
        raise PermanentError(f"{what} {text[:80]!r} would leave the user's view")
    return parts


def pfn_path(pfn: str) -> PurePosixPath:
    """The path part of a root:// PFN (``root://host:port//data/x`` -> ``/data/x``)."""
    path = urlsplit(pfn).path
    return PurePosixPath("/" + path.lstrip("/"))


def mount_path(pfn: str, mount: Path, path_begins_at: int) -> Path:
    """The file on the mount: mount + the PFN path without its first components."""
    parts = pfn_path(pfn).parts[1:]  # drop the root "/"
    kept = _safe_parts("/".join(parts[path_begins_at:]), "PFN path")
    return mount.joinpath(*kept)


def user_view(views_root: Path, user: str) -> Path:
    """The root of ``user``'s view: views_root/user."""
    parts = _safe_parts(user, "user")
    if len(parts) != 1:
        raise PermanentError(f"user {user[:80]!r} would leave the views")
    return views_root / parts[0]


def view_path(views_root: Path, user: str, did: str) -> Path:
    """Where ``user`` sees ``did``: views_root/user/scope/name, never outside views_root/user."""
    scope, sep, name = did.partition(":")
    if not sep:
        raise PermanentError(f"DID {did[:80]!r} is not scope:name")
    base = user_view(views_root, user)
    path = base.joinpath(*_safe_parts(scope, "scope"), *_safe_parts(name, "DID name"))
    if base not in path.parents:
        raise PermanentError(f"DID {did[:80]!r} would leave the user's view")
    return path


def probe_target(mount: Path, probe_path: str) -> Path:
    """What the watcher lists or reads to check ``mount``: its root or a path inside."""
    if not probe_path.strip("/"):
        return mount
    return mount.joinpath(*_safe_parts(probe_path, "probe path"))


@dataclass
class MountHealth:
    """What the watcher knows of one mount, between checks."""

    healthy: bool = False
    failures: int = 0  # failed checks in a row
    remounts: int = 0  # remounts since it was last healthy (the backoff's exponent)
    next_remount_at: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RemountPolicy:
    """When a failing mount is remounted."""

    failures_to_remount: int
    backoff_s: float
    max_backoff_s: float


def after_check(
    health: MountHealth,
    *,
    ok: bool,
    gone: bool,
    now: float,
    policy: RemountPolicy,
    reason: str = "",
) -> bool:
    """Fold one check in; whether to remount now.

    A mount whose xrootdfs is gone (``gone``: exited, or "Transport endpoint is not
    connected") is remounted at once; one that fails to answer after
    ``failures_to_remount`` checks in a row, too. Remounts of a mount that stays broken
    back off exponentially up to ``max_backoff_s``.
    """
    if ok:
        health.healthy, health.failures, health.remounts, health.reason = True, 0, 0, ""
        health.next_remount_at = 0.0
        return False
    health.healthy, health.reason = False, reason
    health.failures += 1
    due = gone or health.failures >= policy.failures_to_remount
    if not due or now < health.next_remount_at:
        return False
    delay = min(policy.backoff_s * 2**health.remounts, policy.max_backoff_s)
    health.next_remount_at = now + delay
    health.remounts += 1
    return True
