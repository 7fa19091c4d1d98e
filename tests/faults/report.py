"""The fault table: every fault test records what it measured, one table at the end.

A test asks for ``fault_report`` and calls it with a :class:`FaultFigure`; at the end of the
session pytest prints the table (``python -m pytest -m faults``), and when ``DLAAS_FAULT_REPORT``
names a file the rows are also written there as JSON lines (``python -m bench.faults`` reads it).
The root ``conftest.py`` makes the fixture and the summary hook available to every test: fault
tests live beside what they break (``tests/faults``, and the XRootD and FUSE ones in
``tests/integration``), all marked ``faults``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest

_ROWS: list[FaultFigure] = []


@dataclass(frozen=True)
class FaultFigure:
    """One fault and what it cost: messages lost and duplicated (both must be 0), recovery."""

    fault: str
    sent: int
    lost: int
    duplicates: int
    recovery_s: float | None = None
    note: str = ""
    # one event's fact sent again after the fault (at-least-once: killed after telling,
    # before recording it told); clients show a fact they have once, so the user does not
    repeats: int = 0


Record = Callable[[FaultFigure], None]


@pytest.fixture
def fault_report() -> Record:
    """Record one row of the fault table."""

    def record(figure: FaultFigure) -> None:
        _ROWS.append(figure)
        path = os.environ.get("DLAAS_FAULT_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as out:  # noqa: PTH123
                out.write(json.dumps(asdict(figure)) + "\n")

    return record


def format_table(rows: list[FaultFigure]) -> str:
    """The fault table as Markdown."""
    lines = [
        (
            "| fault | sent | lost | user-visible duplicates | re-sent, folded by clients "
            "| recovery (s) | note |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        lines.append(
            f"| {r.fault} | {r.sent} | {r.lost} | {r.duplicates} | {r.repeats} "
            f"| {recovery} | {r.note} |"
        )
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault table after the run."""
    if _ROWS:
        terminalreporter.section("faults and figures")
        terminalreporter.write_line(format_table(_ROWS))
