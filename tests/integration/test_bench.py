"""The benchmark's one command runs and prints its tables (no figure is judged here).

The hop section once waited forever for messages that dlaas's bus had sent as batches, and
only a run of the whole command shows such a thing: this runs it at its tiniest sizes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = "hop,saturation,latency,store,scaleout,backlog"  # all but the real Rucio's
TABLES = (
    "## One hop draining a full queue",
    "## Throughput at saturation",
    "## Latency: transfer-done published",
    "## Stager state: transfer-done look-ups",
    "## Scale-out: competing replicas",
    "## Backlog queued before the services start",
)


def test_the_benchmark_command_runs_every_section_and_loses_no_file() -> None:
    # as a user runs it: not with what this session's Rucio clients left in its environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUCIO_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", SECTIONS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for table in TABLES:
        assert table in done.stdout, done.stdout[-3000:]
    progress = [line for line in done.stdout.splitlines() if " lost" in line]
    assert progress
    assert not [line for line in progress if re.search(r"\b[1-9]\d* lost", line)]
