"""One stage request of N files through the real stager against the real Rucio.

``python -m bench.stager_rucio [--files 10000] [--datasets 1] [--naive-sample 200]``

A local Rucio (PostgreSQL, gunicorn with an access log, the judge-injector; no conveyor: no
transfer is measured) gets N files registered at ORIGIN in bulk, in one dataset (or a
container of ``--datasets`` datasets). The stager runs as its own process with its SQLite
store; one ``rule-requested`` for the dataset (container) goes to it over RabbitMQ. Printed:
Rucio HTTP requests (the server's access log, by the stager's user agent) and the stager's
own count of calls, wall time to the rules (the stager's ``request-accepted``) and until
Rucio's injector has made their locks, wall time until every file is a row of the stager's
store, and the stager's peak RSS (VmHWM). Beside it, a naive client making one
add_replication_rule per file, timed on ``--naive-sample`` files and extrapolated to N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from bench.common import load_average, throwaway_vhost, wait_logged, workspace
from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.contracts import RequestAccepted, RequestFailed, RuleRequested
from dlaas.settings import BusSettings
from dlaas_devstack import _proc
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, build_lake, register_dataset
from dlaas_devstack.rucio import RucioStack, RucioStackSettings
from dlaas_stager.tables import files_t

SCOPE, USER = "user.alice", "alice"
ANALYZE_EVERY = 20_000  # files registered between two ANALYZE of Rucio's database
AGENT = "dlaas-stager"  # the stager's user agent at Rucio (its adapter sets it)


@dataclass
class Result:
    """What one run measured (None: not measured or not reached)."""

    files: int
    setup_s: float = 0.0
    accepted_s: float | None = (
        None  # publish -> request-accepted (the stager has rule ids)
    )
    tracked_s: float | None = None  # publish -> every file a row of the stager's store
    injected_s: float | None = None  # publish -> Rucio's injector made every rule's locks
    http_requests: Counter[str] = field(default_factory=Counter)  # access log, stager's
    adapter_calls: Counter[str] = field(default_factory=Counter)  # the stager's /metrics
    rss_idle_mb: float = 0.0
    rss_peak_mb: float = 0.0
    failed: str | None = None
    naive_sample: int = 0
    naive_per_file_ms: float | None = None


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _tracked(db: Path, request_id: str) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            query = f"SELECT count(*) FROM {files_t.name} WHERE request_id = ?"  # noqa: S608  (our table's name)
            return int(conn.execute(query, (request_id,)).fetchone()[0])
        except sqlite3.OperationalError:  # no table yet, or the writer holds it
            return 0


_METRIC = re.compile(
    r'^dlaas_external_calls_total\{call="([^"]+)",outcome="([^"]+)",system="rucio"\} (\S+)$'
)


def _adapter_calls(port: int) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        if match := _METRIC.match(line):
            call, outcome, value = match.groups()
            calls[call if outcome == "ok" else f"{call} ({outcome})"] += int(float(value))
    return calls


def _http_requests(access_log: Path, skip: int) -> Counter[str]:
    """The stager's HTTP requests in the access log after its first ``skip`` lines."""
    counts: Counter[str] = Counter()
    if not access_log.exists():
        return counts
    for line in access_log.read_text().splitlines()[skip:]:
        if f'"{AGENT}/' not in line:
            continue
        request = line.split('"')[1].split()  # "POST /rules/ HTTP/1.1"
        counts[f"{request[0]} /{request[1].split('/')[1].split('?')[0]}"] += 1
    return counts


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@contextlib.contextmanager
def stager_process(
    work: Path, vhost: Vhost, stack: RucioStack, *, async_min_files: int | None = None
) -> Iterator[tuple[_proc.Child, int, Path]]:
    """``dlaas-stager`` as in production (DLAAS_* only); its process, HTTP port, store."""
    db, port = work / "stager.db", _proc.free_port()
    env = {
        "DLAAS_BUS__URL": vhost.url(),
        "DLAAS_RUCIO__HOST": stack.rucio_host,
        "DLAAS_RUCIO__USERNAME": "ddmlab",
        "DLAAS_RUCIO__PASSWORD": "secret",
        "DLAAS_RUCIO__ACCOUNT": "root",
        "DLAAS_RUCIO__TIMEOUT_S": "900",
        "DLAAS_STAGER__DB_URL": f"sqlite+aiosqlite:///{db}",
        "DLAAS_STAGER__WATCHDOG_INTERVAL_S": "3600",
        "DLAAS_HTTP_HOST": "127.0.0.1",
        "DLAAS_HTTP_PORT": str(port),
        "DLAAS_LOG_JSON": "true",
    }
    if async_min_files is not None:
        env["DLAAS_RUCIO__ASYNC_RULE_MIN_FILES"] = str(async_min_files)
    binary = Path(sys.executable).parent / "dlaas-stager"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
    child = _proc.spawn(
        "stager", [str(binary)], log_path=work / "stager.log", env={**environ, **env}
    )
    try:
        wait_logged(child, "service_started", timeout=60)
        yield child, port, db
    finally:
        _proc.stop_all([child], grace=15)


async def _until_tracked(
    db: Path, request_id: str, n_files: int, child: _proc.Child, started: float
) -> float | None:
    """Seconds from ``started`` until the store has a row per file (None: stager died)."""
    while child.alive():
        if await asyncio.to_thread(_tracked, db, request_id) >= n_files:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


async def _listen(url: str) -> tuple[aio_pika.abc.AbstractConnection, Any]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await topology.declare_exchanges(channel)
    queue = await channel.declare_queue(exclusive=True)
    for event in (RequestAccepted, RequestFailed):
        await queue.bind(topology.EVENTS, event.routing_key())
    return connection, queue


async def _answer(queue: Any, request_id: str, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                bodies = [json.loads(raw) for _, raw in batch.unbatch(message)]
            for body in bodies:
                if body.get("request_id") == request_id:
                    return dict(body)
    raise TimeoutError


async def stage_once(
    vhost: Vhost,
    stack: RucioStack,
    work: Path,
    dids: list[str],
    n_files: int,
    *,
    async_min_files: int | None = None,
    timeout: float = 3600,
) -> Result:
    """Send one request for ``dids`` (``n_files`` in all) to a fresh stager process."""
    result = Result(files=n_files)
    request = RuleRequested(request_id=uuid.uuid4(), user=USER, dids=dids, rse=NOTEBOOK)
    request_id = str(request.request_id)
    with stager_process(work, vhost, stack, async_min_files=async_min_files) as (
        child,
        port,
        db,
    ):
        result.rss_idle_mb = _status_kb(child.pid, "VmRSS") / 1024
        connection, queue = await _listen(vhost.url())
        skip = _lines(stack.access_log)
        bus = await Bus(
            BusSettings.model_validate({"url": vhost.url(USER)}), name="bench"
        ).connect()
        started = time.monotonic()
        tracking = asyncio.create_task(
            _until_tracked(db, request_id, n_files, child, started)
        )
        await bus.publish(request, correlation_id=request_id, user_id=USER)
        await bus.close()
        try:
            answer = await _answer(queue, request_id, timeout)
            result.accepted_s = time.monotonic() - started
        finally:
            await connection.close()
        if "reason" in answer:
            tracking.cancel()
            result.failed = str(answer["reason"])
            return result
        result.tracked_s = await asyncio.wait_for(tracking, timeout)
        await asyncio.sleep(2)  # what the stager does after accepting (replica check)
        result.http_requests = _http_requests(stack.access_log, skip)
        result.adapter_calls = _adapter_calls(port)
        result.rss_peak_mb = _status_kb(child.pid, "VmHWM") / 1024
        rules = [str(r) for r in answer.get("rule_ids", [])]
    result.injected_s = await _wait_injected(stack, rules, started, timeout)
    return result


async def _wait_injected(
    stack: RucioStack, rules: list[str], started: float, timeout: float
) -> float | None:
    """Seconds from ``started`` until no rule is left in INJECT (None: not within timeout)."""
    client = stack.client()
    while time.monotonic() - started < timeout:
        states = [
            str((await asyncio.to_thread(client.get_replication_rule, r))["state"])
            for r in rules
        ]
        if "INJECT" not in states:
            return time.monotonic() - started
        await asyncio.sleep(2)
    return None


def naive_per_file_ms(stack: RucioStack, sample: int) -> float:
    """One add_replication_rule per file, as a script without dlaas would: ms per file."""
    name = f"naive-{uuid.uuid4().hex[:8]}"
    dids = register_dataset(stack, SCOPE, name, sample)
    client = stack.client(USER)
    started = time.monotonic()
    for did in dids:
        scope, _, file = did.partition(":")
        client.add_replication_rule([{"scope": scope, "name": file}], 1, NOTEBOOK,
                                    notify="Y", lifetime=86_400)  # fmt: skip
    return (time.monotonic() - started) / sample * 1000


def _analyze(db_name: str) -> None:
    """PostgreSQL here runs without autovacuum: refresh the planner's statistics."""
    subprocess.run(  # noqa: S603  (fixed command)
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db_name, "-q", "-c", "ANALYZE"],  # noqa: S607
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


def _drop(db_name: str) -> None:
    subprocess.run(  # noqa: S603  (fixed command)
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",  # noqa: S607
         f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'],
        check=False, capture_output=True, timeout=120,
    )  # fmt: skip


def register(stack: RucioStack, n_files: int, datasets: int) -> list[str]:
    """N files at ORIGIN: one dataset, or a container of ``datasets`` datasets; the DID."""
    run = uuid.uuid4().hex[:8]
    db_name = stack.settings.db_name

    def analyze(done: int) -> None:
        # chunk times grow 2 s -> 7 s on stale statistics (no autovacuum here)
        if done % ANALYZE_EVERY == 0:
            _analyze(db_name)

    if datasets == 1:
        register_dataset(stack, SCOPE, f"big-{run}", n_files, after_chunk=analyze)
        return [f"{SCOPE}:big-{run}"]
    container = f"bigc-{run}"
    client = stack.client()
    client.add_container(SCOPE, container)
    per = -(-n_files // datasets)
    for i in range(datasets):
        name = f"big-{run}-{i:03d}"
        register_dataset(
            stack, SCOPE, name, min(per, n_files - i * per), after_chunk=analyze
        )
        client.attach_dids(SCOPE, container, [{"scope": SCOPE, "name": name}])
    return [f"{SCOPE}:{container}"]


def _table(r: Result) -> str:
    def secs(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.1f} s"

    def listed(counts: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"

    http, naive = r.http_requests.total(), r.naive_per_file_ms
    naive_s = "n/a" if naive is None else f"{naive * r.files / 1000:,.0f} s"
    rows = [
        ("files in the request", f"{r.files:,}", f"{r.files:,}"),
        ("Rucio HTTP requests", f"{http} ({http / r.files:.5f} per file)" if http else "n/a",
         f"{r.files:,} (1 per file)"),
        ("  by endpoint (access log)", listed(r.http_requests), "POST /rules"),
        ("  stager's own count", listed(r.adapter_calls), "-"),
        ("wall time to the rules", secs(r.accepted_s), naive_s),
        ("  until Rucio made the locks", secs(r.injected_s), "(within the above)"),
        ("wall time until every file tracked", secs(r.tracked_s), "-"),
        ("stager RSS idle / peak (VmHWM)", f"{r.rss_idle_mb:.0f} / {r.rss_peak_mb:.0f} MB",
         "-"),
    ]  # fmt: skip
    heads = ("", "dlaas: one request, stager process", "naive: one rule per file")
    widths = [max(len(row[i]) for row in [heads, *rows]) for i in range(2)]
    out = [f"{a:{widths[0]}}  {b:{widths[1]}}  {c}" for a, b, c in [heads, *rows]]
    out.append(
        "naive: not measured"
        if naive is None
        else f"naive: measured over {r.naive_sample} files ({naive:.1f} ms per rule), "
        f"extrapolated linearly to {r.files:,}"
    )
    out.append(f"Rucio set-up (register, attach, ANALYZE): {r.setup_s:.0f} s")
    if r.failed:
        out.append(f"FAILED: {r.failed}")
    return "\n".join(out)


async def run(
    n_files: int, datasets: int, naive_sample: int, async_min_files: int | None = None
) -> Result:
    """Stand a Rucio up, register the files, measure the naive client and the stager."""
    with workspace() as work, throwaway_vhost() as vhost:
        db_name = f"dlaas_bench_{uuid.uuid4().hex[:8]}"
        settings = RucioStackSettings(
            workdir=work / "rucio", amqp_vhost=vhost.name, db_name=db_name,
            daemons=("judge-injector",), access_log=True, gunicorn_workers=2,
        )  # fmt: skip
        stack = RucioStack(settings)
        try:
            await asyncio.to_thread(stack.start)
            await asyncio.to_thread(build_lake, stack)
            started = time.monotonic()
            dids = await asyncio.to_thread(register, stack, n_files, datasets)
            await asyncio.to_thread(
                _analyze, db_name
            )  # fresh statistics for the request too
            setup_s = time.monotonic() - started
            naive = None
            if naive_sample:
                naive = await asyncio.to_thread(naive_per_file_ms, stack, naive_sample)
            result = await stage_once(
                vhost, stack, work, dids, n_files, async_min_files=async_min_files
            )
            result.setup_s, result.naive_sample = setup_s, naive_sample
            result.naive_per_file_ms = naive
            return result
        finally:
            stack.stop()
            _drop(db_name)


def main(argv: list[str] | None = None) -> int:
    """Parse the sizes, run once, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.stager_rucio")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--datasets", type=int, default=1, help=">1: a container of them")
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument(
        "--async-min-files", type=int, default=None,
        help="the stager's DLAAS_RUCIO__ASYNC_RULE_MIN_FILES (default: its own); "
        "above --files, the rule is made synchronously, as before",
    )  # fmt: skip
    args = parser.parse_args(argv)
    print(f"load before: {load_average()}", flush=True)
    result = asyncio.run(
        run(args.files, args.datasets, args.naive_sample, args.async_min_files)
    )
    print(_table(result))
    print(f"load after: {load_average()}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
