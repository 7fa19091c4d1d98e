"""Scale-out: throughput with 1, 2 and 4 replicas of one service, beside the bare baseline.

The replicas are competing consumers on the same queues (every replica of a service
consumes its service's queue; the broker hands each message to one of them). The fuse
agent is the service of highest CPU per file in bench/RESULTS.md; the stager is the next
one, and several stagers need their state in PostgreSQL (``--pg``). Each case is the
saturation run of ``bench.pipeline`` (files/s reaching the user, CPU per file of every
process), alternating the cases run by run.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import store
from bench.common import load_average, processes_cpu, spawn_python
from bench.pipeline import RunResult, run_once
from bench.variants import Baseline, Dlaas, Variant
from dlaas_devstack import _proc
from dlaas_devstack.broker import Vhost

REPLICAS = (1, 2, 4)


@dataclass(frozen=True)
class Scaled(Dlaas):
    """The dlaas pipeline with ``replicas`` processes of ``service`` (one of the others)."""

    service: str = "fuse_agent"
    replicas: int = 1

    def spawn(self, vhost: Vhost, workdir: Path) -> list[_proc.Child]:
        """The four services, then the extra replicas with the first one's environment."""
        children = super().spawn(vhost, workdir)
        first = next(c for c in children if c.name == self.service)
        env = _service_env(first.pid)
        children += [
            spawn_python(f"{self.service}-{i}", "bench.svc", [self.service], workdir, env)
            for i in range(2, self.replicas + 1)
        ]
        return children


def _service_env(pid: int) -> dict[str, str]:
    """The DLAAS_* settings and PYTHONPATH a running service was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if b"=" in item)
    return {
        key: value
        for key, _, value in pairs
        if key.startswith("DLAAS_") or key == "PYTHONPATH"
    }


def variants(stager_db: str | None) -> list[Variant]:
    """The baseline, the fuse agent x1/x2/x4, and with a database the stager x1/x2/x4."""
    cases: list[Variant] = [Baseline()]
    cases += [
        Scaled(name=f"fuse_agent x{n}", service="fuse_agent", replicas=n)
        for n in REPLICAS
    ]
    if stager_db is not None:
        cases += [
            Scaled(
                name=f"stager x{n} (pg)", service="stager", replicas=n, db_url=stager_db
            )
            for n in REPLICAS
        ]
    return cases


async def compare(files: int, runs: int, *, pg: bool) -> dict[str, list[RunResult]]:
    """Every case ``runs`` times, alternating; the stager cases only with ``pg``."""
    if not pg:
        return await _compare(files, runs, variants(None))
    async with store.postgres_db() as (url, _):
        return await _compare(files, runs, variants(url))


async def _compare(
    files: int, runs: int, cases: list[Variant]
) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {v.name: [] for v in cases}
    for index in range(runs):
        for case in cases:
            result = await run_once(case, files, 0)
            results[case.name].append(result)
            print(
                f"  scaleout run {index + 1}/{runs} {case.name}: "
                f"{result.throughput:.0f} files/s, {result.lost} lost "
                f"(load {load_average()})",
                flush=True,
            )
    return results


def _per_service(cpu: dict[str, float]) -> dict[str, float]:
    """CPU per file summed over the replicas of each service (``fuse_agent-2`` ...)."""
    summed: dict[str, float] = {}
    for name, value in cpu.items():
        key = name.rsplit("-", 1)[0]
        summed[key] = summed.get(key, 0.0) + value
    return summed


def print_table(results: dict[str, list[RunResult]]) -> None:
    """Throughput per case beside the baseline and the single replica; CPU per file."""
    base = statistics.median(r.throughput for r in results["baseline"])
    singles = {
        name.split(" x")[0]: statistics.median(r.throughput for r in runs)
        for name, runs in results.items()
        if " x1" in name
    }
    print(f"\n## Scale-out: competing replicas on {os.cpu_count()} cores (files/s)")
    print(
        "| case | runs | median | min | max | vs baseline | vs 1 replica | files lost "
        "| CPU ms/file per service (replicas summed) | Python total | broker |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        values = [r.throughput for r in runs]
        median = statistics.median(values)
        single = singles.get(name.split(" x")[0])
        versus = f"{median / single:.2f}x" if single else "-"
        cpu = _per_service(
            sorted(runs, key=lambda r: r.throughput)[len(runs) // 2].cpu_ms
        )
        procs = processes_cpu(cpu)
        python = sum(procs.values())
        parts = ", ".join(f"{k} {v:.2f}" for k, v in procs.items())
        print(
            f"| {name} | {len(values)} | {median:.0f} | {min(values):.0f} | "
            f"{max(values):.0f} | {median / base:.2f}x | {versus} | "
            f"{sum(r.lost for r in runs)} of {sum(r.files for r in runs)} | {parts} | "
            f"{python:.2f} | {cpu.get('broker', float('nan')):.2f} |"
        )
