"""The XCache (pfc) g-stream over UDP: ``xrootd.mongstream pfc ... send json insthdr``.

Each datagram is a JSON header line naming the cache (``src.host``, ``src.port``), then
JSON records, one per line, one per release of a file; a NUL ends the datagram. A record with a non-empty
``remotes`` (the origins contacted) is a miss: with prefetch a cold read may count its bytes
as hits, so ``b_miss`` alone is no signal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import structlog

from dlaas_cache_router.domain import lfn_path
from dlaas_cache_router.ports import Miss

log = structlog.get_logger(__name__)


def _cache_name(header: dict[str, Any]) -> str:
    src = header.get("src")
    if not isinstance(src, dict):
        return "unknown"
    return f"{src.get('host', 'unknown')}:{src.get('port', '')}"


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        log.warning("pfc_record_unparsed", text=text[:200])
        return None
    return value if isinstance(value, dict) else None


def _miss(record: dict[str, Any], cache: str) -> Miss | None:
    if record.get("event") != "file_close" or not record.get("remotes"):
        return None
    lfn = record.get("lfn")
    if not isinstance(lfn, str) or not lfn:
        return None
    missed = int(record.get("b_miss") or 0) + int(record.get("b_bypass") or 0)
    return Miss(cache=cache, path=lfn_path(lfn), bytes_missed=max(missed, 0))


def parse_misses(data: bytes) -> list[Miss]:
    """The misses in one g-stream datagram (hits and other records are left out)."""
    cache, misses = "unknown", []
    for line in data.replace(b"\0", b"\n").decode("utf-8", errors="replace").splitlines():
        text = line.strip()
        record = _json(text) if text else None
        if record is None:
            continue
        if "code" in record:  # the header naming the cache, or its identification
            cache = _cache_name(record)
        elif (miss := _miss(record, cache)) is not None:
            misses.append(miss)
    return misses


class PfcListener(asyncio.DatagramProtocol):
    """Listens for g-stream datagrams and hands each miss to ``on_miss`` (not blocking)."""

    def __init__(self, host: str, port: int, on_miss: Callable[[Miss], None]) -> None:
        self.host, self.port = host, port
        self._on_miss = on_miss
        self._transport: asyncio.BaseTransport | None = None

    async def start(self) -> int:
        """Bind the UDP socket; the port bound (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port)
        )
        self.port = int(self._transport.get_extra_info("sockname")[1])
        log.info("pfc_monitor_listening", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Close the socket (idempotent)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """One datagram: its misses, each handed on."""
        try:
            misses = parse_misses(data)
        except (ValueError, TypeError) as exc:  # a bad record must not stop the stream
            log.warning("pfc_datagram_unparsed", source=str(addr[0]), error=str(exc))
            return
        for miss in misses:
            self._on_miss(miss)
