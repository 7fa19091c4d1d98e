"""Warming after a miss: read the missed file's siblings through their caches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from dlaas.bus.consumer import Delivery
from dlaas.contracts import CacheMiss
from dlaas.errors import PermanentError, TransientError
from dlaas_cache_router import domain
from dlaas_cache_router.datasets import Budget, Datasets, RoutedFile, WarmPlan
from dlaas_cache_router.ports import CacheClient
from dlaas_cache_router.settings import WarmOptions

log = structlog.get_logger(__name__)


@dataclass
class Warmer:
    """Handles ``cache-miss``: warms the rest of the dataset, within the budget."""

    datasets: Datasets
    client: CacheClient
    options: WarmOptions
    clock: Callable[[], float] = field(default=time.monotonic)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self.budget = Budget(
            self.options.max_files, self.options.max_bytes, self.options.window_s
        )

    async def on_cache_miss(self, event: CacheMiss, delivery: Delivery) -> None:
        """Warm the files routed with the missed one that are not known to be cached."""
        path = domain.lfn_path(event.lfn)
        plan = self.datasets.plan_warm(path, self.budget, self.clock())
        if plan is None:
            log.info("cache_miss_unknown_file", cache=event.cache, path=path)
            return
        transient = [
            error
            for error in await asyncio.gather(*(self._warm(plan, f) for f in plan.files))
            if error is not None
        ]
        log.info(
            "dataset_warmed",
            dataset=plan.dataset,
            missed=path,
            files=len(plan.files) - len(transient),
            failed=len(transient),
            over_budget=plan.skipped,
        )
        if transient and not delivery.last_attempt:
            raise TransientError(f"{len(transient)} files not warmed: {transient[0]}")

    async def _warm(self, plan: WarmPlan, file: RoutedFile) -> str | None:
        """Warm one file; the reason when a later try may succeed."""
        async with self._slots:
            try:
                result = await self.client.read(file.url, self.options.timeout_s)
            except TransientError as exc:  # its budget back: a later try may succeed
                self.datasets.warm_failed(plan, file)
                log.warning("warm_failed", did=file.did, url=file.url, reason=str(exc))
                return str(exc)
            except PermanentError as exc:  # not tried again in this window
                log.warning("warm_refused", did=file.did, url=file.url, reason=str(exc))
                return None
        if file.adler32 and result.adler32 != file.adler32.lower().zfill(8):
            log.error(
                "warm_checksum_mismatch",
                did=file.did,
                url=file.url,
                expected=file.adler32,
                read=result.adler32,
            )
        else:
            log.info("file_warmed", did=file.did, url=file.url, bytes=result.bytes)
        return None
