"""Sampling profiles of the services while they run (py-spy), summed by function."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def sampling(pids: Mapping[str, int], out: Path | None) -> Iterator[None]:
    """Record each pid with py-spy (raw collapsed stacks in ``out/<name>.txt``) while inside."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
        "py-spy"
    )
    if out is None or spy is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(  # noqa: S603  (our own pids, a fixed tool)
            [
                spy,
                "record",
                "--nonblocking",
                "--gil",  # only samples holding the GIL: Python on the CPU, not waiting
                "-r",
                "100",
                "-f",
                "raw",
                "-o",
                str(out / f"{name}.txt"),
                "--pid",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(
                signal.SIGINT
            )  # py-spy writes what it sampled on SIGINT only
        for proc in procs:
            proc.wait(timeout=30)


def top(path: Path, limit: int = 15) -> list[tuple[str, float, float]]:
    """(function, % of samples inside it, % of samples in it itself), most inclusive first."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            for f in stack.split(";")
            if f
        ]
        total += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    return (
        [
            (frame, 100 * n / total, 100 * own[frame] / total)
            for frame, n in inclusive.most_common(limit)
        ]
        if total
        else []
    )
