"""Fixtures shared by every test: the real broker (a throwaway vhost) and a real Rucio."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlaas_devstack.broker import Vhost
from tests.broker import need, open_broker
from tests.faults.report import (  # every test may record a fault figure
    fault_report,
    pytest_terminal_summary,
)

__all__ = ["fault_report", "pytest_terminal_summary"]


@pytest.fixture(scope="session")
def broker() -> Iterator[Vhost]:
    """A vhost of our own on the real RabbitMQ, deleted at the end of the session."""
    opened = open_broker()
    yield opened
    opened.delete()


@pytest.fixture(scope="session")
def rucio_stack(
    broker: Vhost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """A real Rucio (PostgreSQL, gunicorn, conveyor, judge, hermes to our vhost) with a lake."""
    from dlaas_devstack.lake import build_lake  # noqa: PLC0415  (heavy: only when asked for)
    from dlaas_devstack.rucio import RucioStack, RucioStackSettings  # noqa: PLC0415

    if shutil.which("pg_isready") is None:
        need("PostgreSQL client tools missing")
    workdir: Path = tmp_path_factory.mktemp("rucio")
    settings = RucioStackSettings(
        workdir=workdir,
        amqp_vhost=broker.name,
        db_name=f"dlaas_test_{uuid.uuid4().hex[:8]}",
        daemon_sleep=1.0,
    )
    stack = RucioStack(settings)
    started = time.monotonic()
    stack.start()
    print(f"\n[timing] Rucio stack start-up: {time.monotonic() - started:.1f} s")
    try:
        build_lake(stack)
        yield stack
    finally:
        stack.stop()
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-q",
                "-c",
                f'DROP DATABASE IF EXISTS "{settings.db_name}" WITH (FORCE)',
            ],
            check=False,
            capture_output=True,
            timeout=60,
        )
