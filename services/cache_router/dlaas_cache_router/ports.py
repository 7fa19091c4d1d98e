"""What the cache router needs from the outside, in domain terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ReadResult:
    """A whole file read through a cache."""

    bytes: int
    adler32: str


@dataclass(frozen=True)
class Miss:
    """A cache fetched (part of) a file from its origin."""

    cache: str  # host:port, as the cache names itself
    path: str  # storage path of the file
    bytes_missed: int


class CacheClient(Protocol):
    """Talks to caches over the XRootD protocol; every call carries a timeout."""

    async def probe(self, cache: str, timeout_s: float) -> str | None:
        """None when ``cache`` answers, else why not."""

    async def read(self, url: str, timeout_s: float) -> ReadResult:
        """Read the whole file at ``url`` (which warms the cache it goes through).

        Raises TransientError (timeout, server down) or PermanentError (no such file).
        """

    async def close(self) -> None:
        """Release threads and connections."""
