"""Where a file is on the mount and where the user sees it: pure path arithmetic, checked."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from dlaas.errors import PermanentError


def _safe_parts(text: str, what: str) -> list[str]:
    if "\0" in text or "\\" in text:
        raise PermanentError(f"{what} {text[:80]!r} contains a NUL or backslash")
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


def view_path(views_root: Path, user: str, did: str) -> Path:
    """Where ``user`` sees ``did``: views_root/user/scope/name, never outside views_root/user."""
    scope, _, name = did.partition(":")
    base = views_root.joinpath(*_safe_parts(user, "user"))
    path = base.joinpath(*_safe_parts(scope, "scope"), *_safe_parts(name, "DID name"))
    if base not in path.parents:
        raise PermanentError(f"DID {did[:80]!r} would leave the user's view")
    return path
