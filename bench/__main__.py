"""``python -m bench [--full] [--only saturation,latency,store,...]``: every figure, as tables.

Small sizes by default (a few minutes); ``--full`` for the sizes of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import backlog, hops, rucio_e2e, scaleout, store
from bench.common import load_average, processes_cpu, workspace
from bench.overlay import bus_overlay, code_overlay
from bench.pipeline import RunResult, run_once
from bench.variants import Baseline, Dlaas, Variant

SECTIONS = ("hop", "saturation", "latency", "store", "scaleout", "backlog", "rucio-e2e")


@dataclass(frozen=True)
class Sizes:
    """How much each section does."""

    files: int
    runs: int
    hop_messages: int
    latency_files: int
    store_files: int
    lookups: int
    backlog_files: int  # hermes events queued before the services start (and a tenth)
    e2e_files: int  # the dataset of the real Rucio end to end


SMALL = Sizes(
    files=1_000,
    runs=3,
    hop_messages=3_000,
    latency_files=600,
    store_files=10_000,
    lookups=2_000,
    backlog_files=20_000,
    e2e_files=1_000,
)
FULL = Sizes(
    files=5_000,
    runs=5,
    hop_messages=20_000,
    latency_files=2_000,
    store_files=100_000,
    lookups=10_000,
    backlog_files=1_000_000,
    e2e_files=10_000,
)
# the tiniest sizes that still run every step: a check that the command works, no figures
SMOKE = Sizes(
    files=200,
    runs=1,
    hop_messages=200,
    latency_files=100,
    store_files=1_000,
    lookups=100,
    backlog_files=1_000,
    e2e_files=10,
)


@dataclass(frozen=True)
class Options:
    """Which pipelines run beside the baseline and dlaas."""

    before_bus: Path | None = (
        None  # an overlay with another revision's bus (bench.overlay)
    )
    pg: bool = False  # dlaas with the stager's state in PostgreSQL too
    profile: Path | None = None
    before: str | None = None  # PYTHONPATH of another revision's library and services
    # also dlaas with these settings: (name, ((DLAAS_X, value), ...)), from --also
    also: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    hops: bool = False  # time each hop of dlaas's pipeline in the latency section
    rates: tuple[float, ...] = ()  # the latency section's rates (default: 100/s, base/2)


def _variants(options: Options, pg_url: str | None = None) -> list[Variant]:
    variants: list[Variant] = [Baseline(), Dlaas()]
    if options.before_bus is not None:
        path = str(options.before_bus.resolve())
        variants.append(Dlaas(name="dlaas-before", pythonpath=path))
    if options.before is not None:
        variants.append(Dlaas(name="dlaas-before", pythonpath=options.before))
    variants += [Dlaas(name=name, env=env) for name, env in options.also]
    if pg_url is not None:
        variants.append(Dlaas(db_url=pg_url, name="dlaas-pg"))
    return variants


async def saturation(sizes: Sizes, options: Options) -> dict[str, list[RunResult]]:
    """Alternate the pipelines run by run so that all see the same machine."""
    if not options.pg:
        return await _saturation(sizes, options.profile, _variants(options))
    async with store.postgres_db() as (url, _):
        return await _saturation(sizes, options.profile, _variants(options, url))


async def _saturation(
    sizes: Sizes, profile: Path | None, variants: list[Variant]
) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {v.name: [] for v in variants}
    for index in range(sizes.runs):
        for variant in variants:
            where = profile / f"{variant.name}-{index}" if profile else None
            result = await run_once(variant, sizes.files, 0, profile=where)
            results[variant.name].append(result)
            print(
                f"  saturation run {index + 1}/{sizes.runs} {variant.name}: "
                f"{result.throughput:.0f} files/s, {result.lost} lost "
                f"(load {load_average()})",
                flush=True,
            )
    return results


def _median_run(runs: list[RunResult]) -> RunResult:
    return sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]


def print_saturation(results: dict[str, list[RunResult]]) -> float:
    """Throughput and CPU tables; the baseline's median throughput."""
    base = statistics.median(r.throughput for r in results["baseline"])
    print("\n## Throughput at saturation (files/s reaching the user)")
    print("| pipeline | runs | median | min | max | vs baseline | files lost |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        values = [r.throughput for r in runs]
        median = statistics.median(values)
        print(
            f"| {name} | {len(values)} | {median:.0f} | {min(values):.0f} | "
            f"{max(values):.0f} | {median / base:.2f}x | "
            f"{sum(r.lost for r in runs)} of {sum(r.files for r in runs)} |"
        )
    print("\n## CPU per file at saturation (ms, run of median throughput)")
    print("| pipeline | per process | Python total | broker (beam.smp) |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cpu = _median_run(runs).cpu_ms
        procs = processes_cpu(cpu)
        python = sum(procs.values())
        parts = ", ".join(f"{k} {v:.2f}" for k, v in procs.items())
        print(
            f"| {name} | {parts} | {python:.2f} | {cpu.get('broker', float('nan')):.2f} |"
        )
    return base


async def latency(sizes: Sizes, base: float, options: Options) -> list[RunResult]:
    """The pipelines at 100 events/s and at half the baseline's saturation, ``runs`` times.

    The runs interleave (every pipeline at every rate, then again): a slow spell of the
    machine then hits every pipeline alike rather than one.
    """
    results = []
    for index in range(sizes.runs):
        for rate in options.rates or (100.0, round(base / 2)):
            for variant in _variants(options):
                spy = options.hops and isinstance(variant, Dlaas)
                where = (
                    options.profile / f"latency-{variant.name}-{rate:.0f}-{index}"
                    if options.profile
                    else None
                )
                result = await run_once(
                    variant, sizes.latency_files, rate, hops=spy, profile=where
                )
                results.append(result)
                print(
                    f"  latency run {index + 1}/{sizes.runs} {variant.name} at "
                    f"{rate:.0f}/s: p50 {result.latency.p50:.0f} ms, "
                    f"p99 {result.latency.p99:.0f} ms",
                    flush=True,
                )
    return results


def _by_case(results: list[RunResult]) -> dict[tuple[float, str], list[RunResult]]:
    cases: dict[tuple[float, str], list[RunResult]] = {}
    for r in results:
        cases.setdefault((r.offered, r.variant), []).append(r)
    return dict(sorted(cases.items(), key=lambda item: item[0][0]))  # stable: by rate


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_latency(results: list[RunResult]) -> None:
    """Latency table (medians over the runs), with what 10 s polling clients would see."""
    print(
        "\n## Latency: transfer-done published -> the user's notification received (ms, "
        "median of the runs; p99 range in brackets)"
    )
    print(
        "| pipeline | offered/s | runs | delivered/s | p50 | p99 | p99 vs baseline | max "
        "| CPU ms/file (services, broker) | 10 s poll p50 | poll p99 | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    baseline_p99: dict[float, float] = {}
    for (rate, name), runs in _by_case(results).items():
        p99s = [r.latency.p99 for r in runs]
        p99 = _median(p99s)
        if name == "baseline":
            baseline_p99[rate] = p99
        ratio = p99 / baseline_p99[rate] if baseline_p99.get(rate) else float("nan")
        python = _median([sum(processes_cpu(r.cpu_ms).values()) for r in runs])
        broker = _median([r.cpu_ms.get("broker", float("nan")) for r in runs])
        print(
            f"| {name} | {rate:.0f} | {len(runs)} | "
            f"{_median([r.throughput for r in runs]):.0f} | "
            f"{_median([r.latency.p50 for r in runs]):.0f} | "
            f"{p99:.0f} [{min(p99s):.0f}-{max(p99s):.0f}] | {ratio:.2f}x | "
            f"{max(r.latency.max for r in runs):.0f} | {python:.2f}, {broker:.2f} | "
            f"{_median([r.polled.p50 for r in runs]):.0f} | "
            f"{_median([r.polled.p99 for r in runs]):.0f} | {sum(r.lost for r in runs)} |"
        )
    print("\n## CPU per file at each rate, per process (ms, median of the runs)")
    print("| pipeline | offered/s | per process |")
    print("|---|---|---|")
    for (rate, name), runs in _by_case(results).items():
        names = list(processes_cpu(runs[0].cpu_ms))
        parts = ", ".join(
            f"{k} {_median([r.cpu_ms.get(k, float('nan')) for r in runs]):.2f}"
            for k in names
        )
        print(f"| {name} | {rate:.0f} | {parts} |")
    with_hops = [r for r in results if r.hops]
    if not with_hops:
        return
    print(
        "\n## Where the time goes: each hop, first publication to the next "
        "(ms, median of the runs)"
    )
    print("| pipeline | offered/s | hop | p50 | p99 | max |")
    print("|---|---|---|---|---|---|")
    for (rate, name), runs in _by_case(with_hops).items():
        for hop in runs[0].hops:
            qs = [r.hops[hop] for r in runs if hop in r.hops]
            print(
                f"| {name} | {rate:.0f} | {hop} | {_median([q.p50 for q in qs]):.1f} | "
                f"{_median([q.p99 for q in qs]):.1f} | {max(q.max for q in qs):.1f} |"
            )


def main() -> None:
    """Parse arguments and run the benchmarks."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full sizes (slow)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that it runs, no figures"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument(
        "--profile", type=Path, help="py-spy every service into this folder"
    )
    parser.add_argument(
        "--before-bus",
        metavar="REV",
        help="also run dlaas with the bus of git revision REV (e.g. HEAD)",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run dlaas with the library and services of git revision REV",
    )
    parser.add_argument("--pg", action="store_true", help="also run dlaas on PostgreSQL")
    parser.add_argument("--runs", type=int, help="runs of each case (default by size)")
    parser.add_argument(
        "--backlog", type=int, help="events queued in the backlog section (and a tenth)"
    )
    parser.add_argument(
        "--store-files",
        type=int,
        help="files tracked in the stager's store (store section)",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        type=_also,
        metavar="NAME:DLAAS_X=V[,DLAAS_Y=W]",
        help="also run dlaas named NAME with these settings (repeatable), e.g. "
        "nobatch:DLAAS_BUS__BATCH_MAX_EVENTS=1",
    )
    parser.add_argument(
        "--hops",
        action="store_true",
        help="latency section: also time each hop of dlaas (a spy on its events)",
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default=(),
        metavar="R[,R...]",
        help="latency section: these events/s instead of 100 and half the baseline's "
        "saturation, e.g. 20,100 (20/s: the hops' own cost on an idle machine)",
    )
    args = parser.parse_args()
    sizes = FULL if args.full else SMOKE if args.smoke else SMALL
    if args.runs:
        sizes = dataclasses.replace(sizes, runs=args.runs)
    if args.backlog:
        sizes = dataclasses.replace(sizes, backlog_files=args.backlog)
    if args.store_files:
        sizes = dataclasses.replace(sizes, store_files=args.store_files)
    with workspace() as scratch:
        overlay = bus_overlay(args.before_bus, scratch) if args.before_bus else None
        before = code_overlay(args.before, scratch / "before") if args.before else None
        options = Options(
            overlay, args.pg, args.profile, before, tuple(args.also), args.hops,
            args.rates,
        )  # fmt: skip
        run_all(sizes, set(args.only.split(",")), options)


def _rates(text: str) -> tuple[float, ...]:
    """``20,100`` -> (20.0, 100.0): positive rates only."""
    try:
        rates = tuple(float(r) for r in text.split(",") if r)
    except ValueError:
        rates = ()
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"not R[,R...] events/s: {text!r}")
    return rates


def _also(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``NAME:DLAAS_X=V,DLAAS_Y=W`` -> (NAME, ((DLAAS_X, V), (DLAAS_Y, W)))."""
    name, _, pairs = text.partition(":")
    env = tuple(
        (key, value)
        for key, _, value in (pair.partition("=") for pair in pairs.split(",") if pair)
    )
    if not name or not env or any(not k.startswith("DLAAS_") for k, _ in env):
        raise argparse.ArgumentTypeError(f"not NAME:DLAAS_X=V[,...]: {text!r}")
    return name, env


def run_all(sizes: Sizes, only: set[str], options: Options) -> None:
    """Run the chosen sections, printing each table as it is ready."""
    print(
        f"# dlaas bench {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {platform.python_version()}, load {load_average()}"
    )
    base = 0.0
    if "hop" in only:
        hop_runs = asyncio.run(
            hops.compare(sizes.hop_messages, sizes.runs, options.before_bus)
        )
        hops.print_table(hop_runs)
    if "saturation" in only:
        base = print_saturation(asyncio.run(saturation(sizes, options)))
    if "latency" in only:
        print_latency(asyncio.run(latency(sizes, base or 400.0, options)))
    if "store" in only:
        store.print_table(asyncio.run(store.compare(sizes.store_files, sizes.lookups)))
    if "scaleout" in only:
        scaled = scaleout.compare(sizes.files, sizes.runs, pg=options.pg)
        scaleout.print_table(asyncio.run(scaled))
    if "backlog" in only:
        backlog.print_table(asyncio.run(backlog.compare(sizes.backlog_files)))
    if "rucio-e2e" in only:
        rucio_e2e.print_table(asyncio.run(rucio_e2e.run(sizes.e2e_files)))


if __name__ == "__main__":
    main()
