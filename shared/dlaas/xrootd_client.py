"""The XRootD Python client as the services use it: settings, timeouts, status to errors.

Services that read over XRootD (the cache router's probes and warming, the fuse agent's
download mode) depend on the ``xrootd`` package; it is imported only when first used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Protocol

from dlaas.errors import PermanentError, TransientError

# Process-wide client settings. Without them a dead server hangs a call for a minute or
# more, a timeout fires only every 15 s (TimeoutResolution), and a server that restarted is
# still refused for 30 min (StreamErrorWindow: the client remembers a failed connection).
CLIENT_SETTINGS = {
    "ConnectionWindow": 2,
    "ConnectionRetry": 1,
    "RequestTimeout": 10,
    "TimeoutResolution": 1,
    "StreamErrorWindow": 1,
}
NOT_FOUND = 3011  # kXR_NotFound


class Status(Protocol):
    """What an XRootD call answers besides its result."""

    ok: bool
    errno: int
    message: str


def client() -> ModuleType:
    """``XRootD.client`` (imported late: it reads XRD_* settings at import, not at ours)."""
    from XRootD import client as module  # noqa: PLC0415

    return module  # type: ignore[no-any-return]


def configure_client(overrides: Mapping[str, int] | None = None) -> None:
    """Apply :data:`CLIENT_SETTINGS` and ``overrides`` (XRD_* variables set win)."""
    module = client()
    for key, value in {**CLIENT_SETTINGS, **(overrides or {})}.items():
        module.EnvPutInt(key, value)


def seconds(deadline: float) -> int:
    """The XRootD client's timeouts are whole seconds, at least one."""
    return max(1, math.ceil(deadline - time.monotonic()))


def check(status: Status, url: str) -> None:
    """A failed call as dlaas's errors: not found is permanent, the rest transient."""
    if status.ok:
        return
    if status.errno == NOT_FOUND:
        raise PermanentError(f"{url}: {status.message}")
    raise TransientError(f"{url}: {status.message}")
