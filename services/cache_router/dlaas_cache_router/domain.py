"""Which cache serves a file: rendezvous hashing of the DID over the site's live caches.

Each (cache, DID) pair gets a score; the highest wins. The same file always goes to the same
cache while the set is stable, and when a cache joins or leaves only the files it wins or
held move (about 1/n of them). A dead cache is left out, so its files go to their second
choice; with no cache alive the file is read from its origin.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dlaas_cache_router.settings import CacheEndpoint, CacheSite

_URL_PREFIX = re.compile(r"^/*root[s]?://[^/]*")


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


def lfn_path(text: str) -> str:
    """The storage path of a PFN, a cache URL or an XCache ``lfn``: ``/data/x``.

    ``root://c//root://o//data/x``, ``root://o//data/x``, ``/root://o//data/x`` and
    ``//data/x`` all give ``/data/x`` (a forwarding cache keys its files by path only).
    """
    path = text
    while (match := _URL_PREFIX.match(path)) is not None:
        path = path[match.end() :]
    return "/" + "/".join(part for part in path.split("/") if part)


def _origin(url: str) -> str:
    return urlsplit(url).netloc.lower()


def serves(cache: CacheEndpoint, pfn: str) -> bool:
    """Whether ``cache`` can read ``pfn``: forwarding caches read any origin."""
    return cache.origin is None or _origin(cache.origin) == _origin(pfn)


def site_for(rse: str, sites: Sequence[CacheSite]) -> CacheSite | None:
    """The site serving ``rse``: the one naming it, else the first naming no RSE."""
    named = next((site for site in sites if rse in site.rses), None)
    return named or next((site for site in sites if not site.rses), None)


@dataclass(frozen=True)
class Route:
    """Where a file is read: through ``cache`` (None: the origin) at ``url``."""

    cache: str | None
    url: str


def route(
    did: str,
    pfn: str,
    site: CacheSite | None,
    alive: Callable[[str], bool],
) -> Route:
    """The cache among the site's live ones that can read ``pfn``, by rendezvous hashing."""
    candidates = {
        cache.url: cache
        for cache in (site.caches if site else [])
        if serves(cache, pfn) and alive(cache.url)
    }
    chosen = choose_cache(did, list(candidates))
    if chosen is None:
        return Route(None, pfn)
    if candidates[chosen].origin is not None:  # direct mode: the cache knows its origin
        return Route(chosen, f"{chosen.rstrip('/')}/{lfn_path(pfn)}")
    return Route(chosen, cache_url(pfn, chosen))
