"""The stager's decisions, as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from dlaas.contracts import RequestEvent
from dlaas.errors import PermanentError
from dlaas_stager.ports import FileInfo
from dlaas_stager.settings import StagerOptions

DAY_S = 86_400


def check_user(event: RequestEvent, validated_user: str | None) -> None:
    """The requesting user is the broker-validated publisher, never a field anyone can write."""
    if validated_user is None:
        raise PermanentError("stage request without a broker-validated user_id: refused")
    if validated_user != event.user:
        raise PermanentError(
            f"stage request for user {event.user!r} published by {validated_user!r}: refused"
        )


def account_for(user: str, options: StagerOptions) -> str:
    """The Rucio account a broker user acts as: mapped, else its own name unless refused."""
    if user in options.accounts:
        return options.accounts[user]
    if options.unmapped_users == "refuse":
        raise PermanentError(
            f"no Rucio account is mapped to {user!r}: ask the data-lake operators to add "
            "you to DLAAS_STAGER__ACCOUNTS"
        )
    return user


def lifetime_seconds(requested_days: float | None, options: StagerOptions) -> int:
    """The rule lifetime: the default when absent, capped at the configured maximum."""
    days = options.default_lifetime_days if requested_days is None else requested_days
    return int(min(days, options.max_lifetime_days) * DAY_S)


def activity(requested: str | None, options: StagerOptions) -> str:
    """The transfer activity: the requested one if allowed, else the default."""
    if requested is None:
        return options.activity
    if options.allowed_activities and requested not in options.allowed_activities:
        raise PermanentError(
            f"activity {requested!r} is not allowed here; use one of "
            f"{', '.join(options.allowed_activities)}"
        )
    return requested


def unique_files(files_by_did: Mapping[str, Iterable[FileInfo]]) -> list[FileInfo]:
    """Every file once, whichever DIDs of the request contain it, in first-seen order."""
    seen: dict[str, FileInfo] = {}
    for requested, files in files_by_did.items():
        for info in files:
            parent = None if info.did == requested else requested
            seen.setdefault(info.did, replace(info, parent=parent))
    return list(seen.values())


# Rucio's terse rule and request errors, in words a user can act on.
_EXPLAINED = {
    "NO_SOURCES": "no readable copy of the file exists in the lake",
    "InsufficientAccountLimit": "your Rucio quota at the destination is exhausted",
    "InsufficientTargetRSEs": "no storage element matches the destination",
    "RSE_NOT_AVAILABLE": "the destination storage is unavailable",
}


def explain(reason: str) -> str:
    """Rucio's reason, with what it means first when we know it."""
    for code, meaning in _EXPLAINED.items():
        if code in reason:
            return f"{meaning} (Rucio: {reason})"
    return reason
