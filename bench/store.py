"""The stager's state at scale: lookups/s and size for many tracked files, SQLite vs PostgreSQL."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench.common import RSE, did_of, workspace
from bench.variants import record_request
from dlaas_stager.ports import FileInfo
from dlaas_stager.store import Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PER_REQUEST = 1000


@dataclass(frozen=True)
class StoreResult:
    """What one store measured."""

    backend: str
    files: int
    load_s: float
    lookups_per_s: float
    rss_mb: float  # growth of the stager-side process's resident memory
    size_mb: float  # the database on disk


@asynccontextmanager
async def postgres_db() -> AsyncIterator[tuple[str, str]]:
    """A database of our own on the local PostgreSQL (SQLAlchemy URL, name); dropped after."""
    name = f"dlaas_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def measure(backend: str, url: str, files: int, lookups: int) -> StoreResult:
    """Track ``files`` files, then time ``lookups`` transfer-done look-ups at random."""
    rss_before = _rss_mb()
    store = Store(url)
    await store.init()
    run = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    for start in range(0, files, PER_REQUEST):
        chunk = [
            FileInfo(did_of(i, run), 1024, "0cc737eb")
            for i in range(start, min(files, start + PER_REQUEST))
        ]
        await store.save_request(record_request(str(uuid.uuid4()), chunk))
    load_s = time.perf_counter() - started
    rng = random.Random(1)
    started = time.perf_counter()
    for _ in range(lookups):
        found = await store.waiting_for_file(did_of(rng.randrange(files), run), RSE)
        assert found, "every tracked file waits"  # noqa: S101  (a broken store must not look fast)
    rate = lookups / (time.perf_counter() - started)
    rss = _rss_mb() - rss_before
    await store.close()
    return StoreResult(backend, files, load_s, rate, rss, 0.0)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def compare(files: int, lookups: int) -> list[StoreResult]:
    """SQLite (a file, as the stager's default) and PostgreSQL, the same files and look-ups."""
    with workspace() as workdir:
        path = workdir / "stager.db"
        sqlite = await measure("sqlite", f"sqlite+aiosqlite:///{path}", files, lookups)
        sqlite = _sized(sqlite, path.stat().st_size)
    async with postgres_db() as (url, name):
        pg = await measure("postgresql", url, files, lookups)
        admin = await asyncpg.connect(PG_ADMIN)
        size = await admin.fetchval("SELECT pg_database_size($1)", name)
        await admin.close()
        pg = _sized(pg, int(size))
    return [sqlite, pg]


def _sized(result: StoreResult, size: int) -> StoreResult:
    return StoreResult(
        result.backend,
        result.files,
        result.load_s,
        result.lookups_per_s,
        result.rss_mb,
        size / 2**20,
    )


def print_table(results: list[StoreResult]) -> None:
    """Markdown table of the store comparison."""
    print("\n## Stager state: transfer-done look-ups (waiting_for_file), one at a time")
    print(
        "| backend | files tracked | load s | look-ups/s | process RSS growth MB | on disk MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.backend} | {r.files} | {r.load_s:.1f} | {r.lookups_per_s:.0f} | "
            f"{r.rss_mb:.0f} | {r.size_mb:.1f} |"
        )
