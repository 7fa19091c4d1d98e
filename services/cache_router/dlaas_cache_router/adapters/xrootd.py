"""XRootD client: probe caches and read files through them, in threads, with timeouts."""

from __future__ import annotations

import asyncio
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from dlaas.bus.metrics import EXTERNAL_CALLS
from dlaas.errors import PermanentError, TransientError
from dlaas.xrootd_client import check, client, configure_client, seconds
from dlaas_cache_router.ports import ReadResult

_CHUNK = 8 * 1024 * 1024


def _query_version(cache: str, timeout_s: float) -> str | None:
    from XRootD.client.flags import QueryCode  # noqa: PLC0415 - see _client

    status, _ = (
        client()
        .FileSystem(cache)
        .query(QueryCode.CONFIG, "version", timeout=seconds(time.monotonic() + timeout_s))
    )
    return None if status.ok else str(status.message)


def _read_all(url: str, timeout_s: float) -> ReadResult:
    deadline = time.monotonic() + timeout_s
    adler, offset = 1, 0
    with client().File() as remote:
        status, _ = remote.open(url, timeout=seconds(deadline))
        check(status, url)
        while True:
            if time.monotonic() > deadline:
                raise TransientError(f"{url}: read took over {timeout_s} s")
            status, data = remote.read(offset, _CHUNK, timeout=seconds(deadline))
            check(status, url)
            if not data:
                return ReadResult(offset, f"{adler & 0xFFFFFFFF:08x}")
            adler = zlib.adler32(data, adler)
            offset += len(data)


class XRootDCaches:
    """The :class:`~dlaas_cache_router.ports.CacheClient` over the XRootD Python client.

    Calls run in threads of their own pools (probes never wait behind long reads); the
    event loop waits at most the timeout plus one second, then abandons the thread.
    """

    def __init__(self, *, probe_workers: int = 8, read_workers: int = 4) -> None:
        configure_client()
        self._probes = ThreadPoolExecutor(probe_workers, thread_name_prefix="xrd-probe")
        self._reads = ThreadPoolExecutor(read_workers, thread_name_prefix="xrd-read")

    async def probe(self, cache: str, timeout_s: float) -> str | None:
        """None when ``cache`` answers ``query config version``, else why not."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._probes, _query_version, cache, timeout_s)
        try:
            reason = await asyncio.wait_for(future, timeout_s + 1)
        except TimeoutError:
            reason = f"no answer within {timeout_s} s"
        except Exception as exc:  # a probe that cannot even be made says: not usable
            reason = f"{type(exc).__name__}: {exc}"
        EXTERNAL_CALLS.labels(
            "xrootd", "probe", "ok" if reason is None else "error"
        ).inc()
        return reason

    async def read(self, url: str, timeout_s: float) -> ReadResult:
        """Read the whole file at ``url`` (through a cache: warms it)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._reads, _read_all, url, timeout_s)
        try:
            result = await asyncio.wait_for(future, timeout_s + 1)
        except TimeoutError as exc:
            EXTERNAL_CALLS.labels("xrootd", "read", "timeout").inc()
            raise TransientError(f"{url}: no answer within {timeout_s} s") from exc
        except (TransientError, PermanentError):
            EXTERNAL_CALLS.labels("xrootd", "read", "error").inc()
            raise
        EXTERNAL_CALLS.labels("xrootd", "read", "ok").inc()
        return result

    async def close(self) -> None:
        """Stop the pools without waiting for abandoned calls."""
        self._probes.shutdown(wait=False, cancel_futures=True)
        self._reads.shutdown(wait=False, cancel_futures=True)
