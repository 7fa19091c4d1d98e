"""What every benchmark shares: throwaway vhosts, child processes, CPU from /proc, stats."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dlaas_devstack import _proc
from dlaas_devstack.broker import Admin, Vhost, create_vhost

CLK_TCK = os.sysconf("SC_CLK_TCK")
USER = "alice"
RSE = "NOTEBOOK"
SCOPE = "user.alice"


@contextmanager
def throwaway_vhost() -> Iterator[Vhost]:
    """A fresh vhost with the service user and alice/bob, deleted afterwards."""
    vhost = create_vhost(Admin(), f"dlaas-bench-{uuid.uuid4().hex[:8]}")
    try:
        yield vhost
    finally:
        vhost.delete()


def did_of(index: int, run: str) -> str:
    """The DID of file ``index`` of a run (runs never share names)."""
    return f"{SCOPE}:bench-{run}.f{index:06d}"


def hermes_body(did: str, sent_at: float) -> bytes:
    """A ``transfer-done`` exactly as Rucio's hermes sends it (created_at: when sent)."""
    scope, _, name = did.partition(":")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sent_at))
    stamp += f".{int(sent_at % 1 * 1e6):06d}"
    lfn = f"{scope.replace('.', '/')}/6d/15/{name}"
    payload = {
        "activity": "User Subscriptions",
        "request-id": uuid.uuid4().hex,
        "duration": 0,
        "checksum-adler": "0cc737eb",
        "checksum-md5": None,
        "file-size": 1024,
        "bytes": 1024,
        "guid": None,
        "previous-request-id": None,
        "protocol": "mock",
        "scope": scope,
        "name": name,
        "dataset": "ds",
        "datasetScope": scope,
        "src-type": "DISK",
        "src-rse": "ORIGIN",
        "src-url": f"mock://127.0.0.1:0/data/origin/{lfn}",
        "dst-type": "DISK",
        "dst-rse": RSE,
        "dst-url": f"mock://127.0.0.1:0/data/notebook/{lfn}",
        "reason": "",
        "transfer-endpoint": "mock://localhost",
        "transfer-id": uuid.uuid4().hex,
        "transfer-link": "",
        "created_at": None,
        "submitted_at": stamp[:19],
        "started_at": stamp[:19],
        "transferred_at": stamp[:19],
        "tool-id": "rucio-conveyor",
        "account": USER,
        "datatype": None,
    }
    envelope = {"event_type": "transfer-done", "payload": payload, "created_at": stamp}
    return json.dumps(envelope).encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def processes_cpu(cpu: Mapping[str, float]) -> dict[str, float]:
    """The CPU per file of each Python process of a run (the broker's left out)."""
    return {name: value for name, value in cpu.items() if name != "broker"}


def broker_pid() -> int | None:
    """The pid of RabbitMQ's beam.smp, when it runs on this machine.

    The oldest one: ``rabbitmqctl`` (run by anyone, any time) is a short-lived beam.smp too.
    """
    found: list[tuple[int, int]] = []  # (start time in clock ticks, pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    stat = (entry / "stat").read_text().rpartition(")")[2].split()
                    found.append((int(stat[19]), int(entry.name)))
            except (OSError, IndexError, ValueError):
                continue
    return min(found)[1] if found else None


def spawn_python(
    name: str,
    module: str,
    args: Sequence[str],
    workdir: Path,
    env: dict[str, str],
) -> _proc.Child:
    """Start ``python -m module args`` in workdir, its own session, output to logs/name.log.

    ``env["PYTHONPATH"]``, when given, comes before this checkout (to run another ``dlaas``).
    """
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    log_path = workdir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        popen = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONPATH": path},
            cwd=workdir,  # services that default to a relative database file keep it here
            start_new_session=True,
        )
    return _proc.Child(name=name, popen=popen, log_path=log_path)


def wait_logged(child: _proc.Child, marker: str, timeout: float = 30) -> None:
    """Wait until ``marker`` shows in the child's log (or it died)."""

    def seen() -> bool:
        return not child.alive() or marker in child.log_path.read_text(errors="replace")

    _proc.wait_until(seen, timeout=timeout, what=f"{child.name} to start")
    if not child.alive():
        raise RuntimeError(f"{child.name} died:\n{_proc.tail(child.log_path)}")


def stop(children: Sequence[_proc.Child]) -> None:
    """SIGTERM, bounded wait, SIGKILL: only the children we started."""
    _proc.stop_all(children, grace=10)


@dataclass(frozen=True)
class Quantiles:
    """p50/p99/max of a sample, in milliseconds."""

    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Quantiles:
        """Quantiles of latencies given in seconds."""
        ms = sorted(s * 1000 for s in seconds)
        if not ms:
            return cls(float("nan"), float("nan"), float("nan"))
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return cls(statistics.median(ms), p99, ms[-1])


def load_average() -> str:
    """The 1/5/15-minute load, to judge how quiet the machine was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextmanager
def workspace() -> Iterator[Path]:
    """A scratch folder, removed afterwards unless BENCH_KEEP is set (to read the logs)."""
    path = Path(tempfile.mkdtemp(prefix="dlaas-pipebench-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
