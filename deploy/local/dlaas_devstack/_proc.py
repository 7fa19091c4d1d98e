"""Process helpers for the dev stack: free ports, waiting, child processes that always stop."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

log = structlog.get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> None:
    """Poll predicate until it is true; raise TimeoutError naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file (empty when missing), for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_logged(
    argv: list[str], *, log_path: Path, env: Mapping[str, str] | None = None
) -> None:
    """Run a command to completion, appending its output to log_path; raise on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        result = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} exited {result.returncode}; last lines of {log_path}:\n{tail(log_path)}"
        )


@dataclass
class Child:
    """A child process started in its own session (so its whole group can be signalled)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.popen.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        """Send sig to the child's process group, ignoring a group that is already gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


def spawn(name: str, argv: list[str], *, log_path: Path, env: Mapping[str, str]) -> Child:
    """Start argv in a new session with stdout and stderr going to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    log.info("process_started", process=name, pid=popen.pid, log=str(log_path))
    return Child(name=name, popen=popen, log_path=log_path)


def stop_all(children: Iterable[Child], *, grace: float = 10.0) -> None:
    """SIGTERM every child's group, wait at most `grace` seconds in all, then SIGKILL."""
    pending = list(children)
    for child in pending:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in pending:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in pending:
        # SIGKILL the group even when the leader exited: gunicorn workers may linger.
        child.signal_group(signal.SIGKILL)
        if child.alive():
            log.warning("process_killed", process=child.name, pid=child.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=5)


def hold_lock(path: Path, *, what: str) -> IO[str]:
    """Take an exclusive lock on path without waiting; keep the returned file open to hold it.

    The kernel releases it when the file is closed or the process dies; :func:`release_lock`
    also removes the file. A lock taken on a file removed meanwhile is taken again on the
    path's new file, so two holders never hold two files of one path.
    """
    while True:
        handle = path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(
                f"{what} is in use by another process (lock {path})"
            ) from None
        try:
            if path.stat().st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # its holder released it (and removed it) as we opened it


def release_lock(handle: IO[str], path: Path) -> None:
    """Remove the lock's file, then release it (what hold_lock took)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    handle.close()


def ensure_venv(venv: Path, packages: Sequence[str]) -> None:
    """Build venv with packages unless a complete one is there (marker file), under a lock.

    A venv whose build was interrupted has no marker and is rebuilt from scratch.
    """
    marker, wanted = venv / ".dlaas-complete", " ".join(packages)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f".{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == wanted:
            return
        started = time.monotonic()
        log.info("venv_building", venv=str(venv), packages=wanted)
        shutil.rmtree(venv, ignore_errors=True)
        for argv in _venv_build_commands(venv, packages):
            run_logged(argv, log_path=venv.parent / f"{venv.name}.build.log")
        marker.write_text(wanted)
        log.info(
            "venv_built", venv=str(venv), seconds=round(time.monotonic() - started, 1)
        )


def _venv_build_commands(venv: Path, packages: Sequence[str]) -> list[list[str]]:
    """Run `python -m venv`, then install with uv when it is there (5x faster than pip)."""
    python = str(venv / "bin" / "python")
    uv = shutil.which("uv")
    install = (
        [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", python]
        if uv
        else [python, "-m", "pip", "install", "--quiet"]
    )
    return [[sys.executable, "-m", "venv", str(venv)], [*install, *packages]]


def memcached_argv(port: int) -> list[str] | None:
    """Command line of a memcached on 127.0.0.1:port (None when it is not installed)."""
    binary = shutil.which("memcached")
    if binary is None:
        return None
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *user]
