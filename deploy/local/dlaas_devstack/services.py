"""The four dlaas services as separate processes, configured only through DLAAS_* variables."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from dlaas_devstack import _proc

SERVICES = ("stager", "cache-router", "fuse-agent", "notifier")


@dataclass(frozen=True)
class DlaasConfig:
    """What the local services need to know about the broker, Rucio, caches and mounts."""

    workdir: Path
    amqp_url: str
    rucio_host: str
    rucio_username: str = "ddmlab"
    rucio_password: str = "secret"  # noqa: S105  (the local stack's well-known test login)
    rucio_account: str = "root"
    rse: str = "NOTEBOOK"
    mount_path: Path = Path("/mnt/notebook")
    path_begins_at: int = 2
    cache_endpoints: tuple[str, ...] = ()
    accounts: dict[str, str] = field(default_factory=dict)
    db_url: str | None = None

    @property
    def views(self) -> Path:
        """Root of the users' views."""
        return self.workdir / "views"

    def env(self) -> dict[str, str]:
        """The environment of every service process (each reads its own part)."""
        mounts = [
            {
                "rse": self.rse,
                "mount_path": str(self.mount_path),
                "path_begins_at": self.path_begins_at,
            }
        ]
        return {
            "DLAAS_BUS__URL": self.amqp_url,
            "DLAAS_BUS__RETRY_DELAYS_S": "[0.5, 1, 2, 5]",
            "DLAAS_LOG_JSON": "true",
            "DLAAS_RUCIO__HOST": self.rucio_host,
            "DLAAS_RUCIO__USERNAME": self.rucio_username,
            "DLAAS_RUCIO__PASSWORD": self.rucio_password,
            "DLAAS_RUCIO__ACCOUNT": self.rucio_account,
            "DLAAS_STAGER__DB_URL": self.db_url
            or f"sqlite+aiosqlite:///{self.workdir / 'stager.db'}",
            "DLAAS_STAGER__ACCOUNTS": json.dumps(self.accounts),
            "DLAAS_CACHE__ENDPOINTS": json.dumps(list(self.cache_endpoints)),
            "DLAAS_FUSE__MOUNTS": json.dumps(mounts),
            "DLAAS_FUSE__VIEWS_ROOT": str(self.views),
        }


def _started(child: _proc.Child) -> Callable[[], bool]:
    def started() -> bool:
        return not child.alive() or "service_started" in child.log_path.read_text(
            errors="replace"
        )

    return started


class DlaasServices:
    """Start the four services (one process each) and stop them, always."""

    def __init__(self, config: DlaasConfig) -> None:
        self.config = config
        self.children: list[_proc.Child] = []
        self.http_ports: dict[
            str, int
        ] = {}  # /healthz, /readyz, /metrics of each service

    def start(self, timeout: float = 30.0) -> Self:
        """Spawn every service and wait until each consumes."""
        for name in SERVICES:
            self.http_ports[name] = _proc.free_port()
            self.children.append(self._spawn(name))
        for child in self.children:
            _proc.wait_until(
                _started(child), timeout=timeout, what=f"dlaas {child.name} to start"
            )
            if not child.alive():
                raise RuntimeError(f"{child.name} died:\n{_proc.tail(child.log_path)}")
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one service, as a crash would (its unacked messages return to the queue)."""
        child = next(c for c in self.children if c.name == name)
        child.signal_group(signal.SIGKILL)
        child.popen.wait()

    def restart(self, name: str, timeout: float = 30.0) -> None:
        """Start a killed service again, with the same environment and port."""
        index = next(i for i, c in enumerate(self.children) if c.name == name)
        old = self.children[index].log_path
        old.rename(old.with_suffix(f".{int(time.time())}.log"))  # wait for the new start
        self.children[index] = self._spawn(name)
        _proc.wait_until(
            _started(self.children[index]), timeout=timeout, what=f"{name} up"
        )

    def stop(self) -> None:
        """SIGTERM, bounded wait, SIGKILL (idempotent)."""
        _proc.stop_all(self.children, grace=15)
        self.children.clear()

    def _spawn(self, name: str) -> _proc.Child:
        env = {
            **os.environ,
            **self.config.env(),
            "DLAAS_HTTP_HOST": "127.0.0.1",
            "DLAAS_HTTP_PORT": str(self.http_ports[name]),
        }
        log = self.config.workdir / "logs" / f"{name}.log"
        binary = Path(sys.executable).parent / f"dlaas-{name}"
        return _proc.spawn(name, [str(binary)], log_path=log, env=env)

    def logs(self) -> dict[str, Path]:
        """Log file of each service."""
        return {c.name: c.log_path for c in self.children}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
