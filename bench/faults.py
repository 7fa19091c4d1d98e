"""``python -m bench.faults [PYTEST ARGS]``: run the fault suite, print its table of figures.

Runs ``python -m pytest -m faults`` (plus any arguments, e.g. ``-k broker``) with
``DLAAS_FAULT_REPORT`` naming a scratch file, where every fault test writes the row it measured
(fault, files sent, lost, user-visible duplicates, recovery seconds), then prints the rows as
one Markdown table. Exits with pytest's status.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import load_average
from tests.faults.report import FaultFigure, format_table

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> tuple[int, list[FaultFigure]]:
    """Run the suite; pytest's status and the rows the tests recorded."""
    with tempfile.TemporaryDirectory(prefix="dlaas-faults-") as folder:
        report = Path(folder) / "faults.jsonl"
        report.touch()
        argv = [sys.executable, "-m", "pytest", "-m", "faults", "-p", "no:cacheprovider",
                "-q", "-rxXs", *args]  # fmt: skip
        env = {**os.environ, "DLAAS_FAULT_REPORT": str(report)}
        status = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode  # noqa: S603
        lines = report.read_text(encoding="utf-8").splitlines()
    return status, [FaultFigure(**json.loads(line)) for line in lines if line.strip()]


def main() -> None:
    """Entry point."""
    started = dt.datetime.now(dt.UTC)
    status, rows = run(sys.argv[1:])
    print()
    print(f"## Faults ({started:%Y-%m-%d %H:%M} UTC, load {load_average()})")
    print()
    print(format_table(rows) if rows else "(no fault test recorded a figure)")
    print()
    print(f"pytest exited {status}")
    sys.exit(status)


if __name__ == "__main__":
    main()
