"""Which cache serves a file: rendezvous hashing of the DID over the healthy caches.

Each (cache, DID) pair gets a score; the highest wins. The same file always goes to the same
cache while the set is stable, and when a cache joins or leaves only the files it wins or
held move (about 1/n of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _score(cache: str, did: str) -> int:
    digest = hashlib.blake2b(f"{cache}\0{did}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose_cache(did: str, caches: Sequence[str]) -> str | None:
    """The cache for ``did`` among ``caches``; None when there is none."""
    return max(caches, key=lambda cache: _score(cache, did), default=None)


def cache_url(pfn: str, cache: str | None) -> str:
    """The URL reading ``pfn`` through a forwarding XCache, or the PFN itself."""
    if cache is None:
        return pfn
    return f"{cache.rstrip('/')}//{pfn}"
