"""A real Rucio (server, conveyor, judge, hermes) on this machine, for tests and local runs."""

from __future__ import annotations

import argparse
import asyncio
import configparser
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import structlog
from rucio.client import Client

from dlaas_devstack import _proc
from dlaas_devstack.lake import build_lake

if TYPE_CHECKING:
    from types import TracebackType

log = structlog.get_logger(__name__)

RUCIO_VERSION = "41.5.1"
SERVER_PACKAGES = (
    f"rucio=={RUCIO_VERSION}",
    f"rucio-clients=={RUCIO_VERSION}",
    "stomp.py",
    "gunicorn",
    "psycopg[binary]",
)
USERPASS = ("ddmlab", "secret")
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Rucio's daemons a stack runs, with their own arguments. judge-injector makes the rules
# created with asynchronous=True (dlaas asks for it on big requests).
DAEMONS: dict[str, tuple[str, ...]] = {
    "conveyor-submitter": (),
    "conveyor-poller": ("--older-than", "0"),
    "conveyor-finisher": (),
    "judge-evaluator": (),
    "judge-injector": (),
    "hermes": (),
}

# Runs in the Rucio venv: recreate the database, then create schema, base VO and root.
_BOOTSTRAP = """
import sys, psycopg
db, admin = sys.argv[1], sys.argv[2]
with psycopg.connect(admin, autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    conn.execute(f'CREATE DATABASE "{db}"')
from rucio.db.sqla.util import build_database, create_base_vo, create_root_account
build_database(); create_base_vo(); create_root_account()
"""


def default_rucio_venv() -> Path:
    """Where the Rucio server venv lives: $DLAAS_RUCIO_VENV or ~/.cache/dlaas/rucio-<version>."""
    configured = os.environ.get("DLAAS_RUCIO_VENV")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "dlaas" / f"rucio-{RUCIO_VERSION}"


@dataclass(frozen=True)
class RucioStackSettings:
    """Everything that varies between two local Rucio stacks."""

    workdir: Path
    amqp_vhost: str = "/"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    stomp_port: int = 61613
    hermes_exchange: str = "rucio.hermes"
    instance: str = "default"  # the routing key its hermes publishes with
    db_name: str = "dlaas_rucio"
    daemon_sleep: float = 1.0  # Rucio's CLIs take whole seconds and never sleep under 1 s
    xrootd_port: int = 1094
    gunicorn_workers: int = 2
    rucio_venv: Path = field(default_factory=default_rucio_venv)
    # which of DAEMONS run (a benchmark may leave the conveyor out)
    daemons: tuple[str, ...] = tuple(DAEMONS)
    access_log: bool = False  # gunicorn logs every request to log/access.log (benchmarks)

    def __post_init__(self) -> None:
        if not _DB_NAME.fullmatch(self.db_name):
            raise ValueError(f"db_name must match {_DB_NAME.pattern}: {self.db_name!r}")


def amqp_url_for_vhost(amqp_url: str, vhost: str) -> str:
    """Return amqp_url with its path replaced by the (quoted) vhost."""
    parts = urlsplit(amqp_url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


async def _declare_topic_exchange(url: str, name: str) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


def declare_topic_exchange(url: str, name: str) -> None:
    """Declare a durable topic exchange; works whether or not the caller runs an event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _declare_topic_exchange(url, name)).result(timeout=30)


class _PrivateTokenClient(Client):  # type: ignore[misc]  # rucio-clients ships no types
    """A rucio Client that keeps its token under the stack's workdir, one file per account.

    The default token folder under /tmp is shared by every stack of this user, and
    `[client] auth_token_file_path` would share one token between all accounts.
    """

    def __init__(self, *, token_dir: Path, **kwargs: object) -> None:
        self._dlaas_token_dir = token_dir
        super().__init__(**kwargs)

    def _get_auth_tokens(self) -> tuple[str | None, str, str, str]:
        path = str(self._dlaas_token_dir)
        return None, f"{path}/auth_token_exp", f"{path}/auth_token", path


class RucioStack:
    """One Rucio server with its daemons; start() brings it up, stop() takes all of it down."""

    def __init__(self, settings: RucioStackSettings) -> None:
        self.settings = settings
        self.workdir = settings.workdir.resolve()
        self._children: list[_proc.Child] = []
        self._port: int | None = None
        self._memcached_port = 0
        self._log_paths: dict[str, Path] = {}  # kept after stop(), for post-mortems
        self._lock = threading.Lock()
        self._db_lock: IO[str] | None = None
        self._db_lock_path = (
            Path(tempfile.gettempdir()) / f"dlaas-rucio-db-{self.settings.db_name}.lock"
        )

    # -- paths and addresses -------------------------------------------------------
    @property
    def rucio_host(self) -> str:
        """Base URL of the REST API (known once start() chose a port)."""
        if self._port is None:
            raise RuntimeError("the Rucio stack is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def client_config(self) -> Path:
        """A rucio.cfg for rucio-clients: userpass ddmlab/secret as root."""
        return self.workdir / "etc" / "client.cfg"

    @property
    def server_config(self) -> Path:
        """The rucio.cfg of the server and the daemons."""
        return self.workdir / "etc" / "rucio.cfg"

    @property
    def storage_root(self) -> Path:
        """RSE storage: the PFN path /data/<rse lower>/... is storage_root/data/<rse lower>/..."""
        return self.workdir / "storage"

    @property
    def access_log(self) -> Path:
        """The REST server's access log: one line per HTTP request (with settings.access_log)."""
        return self.workdir / "log" / "access.log"

    @property
    def memcached_port(self) -> int:
        """Port of this stack's private memcached."""
        return self._memcached_port

    @property
    def rse_port(self) -> int:
        """Port written in the RSEs' root protocol."""
        return self.settings.xrootd_port

    def logs(self) -> dict[str, Path]:
        """Log file per process, for debugging failed tests."""
        return {"bootstrap": self.workdir / "log" / "bootstrap.log", **self._log_paths}

    def raise_if_exited(self) -> None:
        """Raise RuntimeError (with the log's tail) if a process of the stack has exited."""
        for child in self._children:
            if not child.alive():
                tail = _proc.tail(child.log_path)
                raise RuntimeError(
                    f"{child.name} exited; end of {child.log_path}:\n{tail}"
                )

    def pids(self) -> dict[str, int]:
        """Process id (and process group id) of every running process of this stack."""
        return {c.name: c.pid for c in self._children}

    def client(self, account: str = "root") -> Any:  # noqa: ANN401  # rucio-clients is untyped
        """A rucio-clients Client for account, authenticated as ddmlab/secret."""
        username, password = USERPASS
        return _PrivateTokenClient(
            token_dir=self.workdir / "tokens" / account,
            rucio_host=self.rucio_host,
            auth_host=self.rucio_host,
            account=account,
            auth_type="userpass",
            creds={"username": username, "password": password},
        )

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Bring up the database, the REST API and the daemons; return when /ping answers."""
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "rucio_stack_started",
            host=self.rucio_host,
            seconds=round(time.monotonic() - started, 1),
        )

    def _start(self) -> None:
        # Two live stacks on one database would run each other's transfers and messages.
        self._db_lock = _proc.hold_lock(
            self._db_lock_path, what=f"PostgreSQL database {self.settings.db_name}"
        )
        _proc.ensure_venv(self.settings.rucio_venv, SERVER_PACKAGES)
        self._port, self._memcached_port = _proc.free_port(), _proc.free_port()
        for sub in ("etc", "log", "trace", "tokens", "storage/data"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._write_configs()
        self._start_memcached()
        self._bootstrap_database()
        declare_topic_exchange(
            amqp_url_for_vhost(self.settings.amqp_url, self.settings.amqp_vhost),
            self.settings.hermes_exchange,
        )
        # The daemons wait ~10 s at start-up (partition rebalancing): overlap that with gunicorn.
        for name, argv in self._commands().items():
            self._spawn(name, argv)
        _proc.wait_until(self._ping, timeout=120, what=f"{self.rucio_host}/ping")

    def _bootstrap_database(self) -> None:
        """Drop and recreate the database, then Rucio's schema, base VO and root account."""
        python = str(self.settings.rucio_venv / "bin" / "python")
        argv = [python, "-c", _BOOTSTRAP, self.settings.db_name, PG_ADMIN]
        _proc.run_logged(argv, log_path=self.logs()["bootstrap"], env=self._env())

    def stop(self) -> None:
        """Stop every process of this stack (SIGTERM, bounded wait, SIGKILL); idempotent."""
        with self._lock:
            children, self._children = self._children, []
            db_lock, self._db_lock = self._db_lock, None
        if children:
            _proc.stop_all(children)
            log.info("rucio_stack_stopped", processes=len(children))
        if db_lock is not None:
            _proc.release_lock(db_lock, self._db_lock_path)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults: one process of the stack down and up again -----------------------------
    def stop_server(self) -> None:
        """Stop the REST API (gunicorn and its workers): clients get connection refused."""
        self._stop_process("server")

    def start_server(self, timeout: float = 120) -> None:
        """Start the REST API again on the same port; return when /ping answers."""
        self._start_process("server")
        _proc.wait_until(self._ping, timeout=timeout, what=f"{self.rucio_host}/ping")

    def stop_hermes(self) -> None:
        """Stop hermes: Rucio keeps its messages in its database until hermes runs again."""
        self._stop_process("hermes")

    def start_hermes(self) -> None:
        """Start hermes again: the messages queued meanwhile go out in a burst."""
        self._start_process("hermes")

    def _stop_process(self, name: str) -> None:
        with self._lock:
            child = next((c for c in self._children if c.name == name), None)
            if child is None:
                raise RuntimeError(f"{name} is not running in this Rucio stack")
            self._children.remove(child)
        _proc.stop_all([child])
        log.info("rucio_process_stopped", process=name)

    def _start_process(self, name: str) -> None:
        with self._lock:
            if any(c.name == name for c in self._children):
                raise RuntimeError(f"{name} is already running in this Rucio stack")
        self._spawn(name, self._commands()[name])

    # -- internals -----------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        child = _proc.spawn(
            name, argv, log_path=self.workdir / "log" / f"{name}.log", env=self._env()
        )
        with self._lock:
            self._children.append(child)
            self._log_paths[name] = child.log_path

    def _start_memcached(self) -> None:
        """Start a private memcached: Rucio is much slower without one.

        Private, because Rucio caches e.g. RSE name -> id under keys that do not name the
        database: a memcached shared by two stacks hands one the ids of the other.
        """
        argv = _proc.memcached_argv(self._memcached_port)
        if argv is None:
            log.warning(
                "memcached_not_installed", effect="Rucio runs without a cache, slower"
            )
            return
        self._spawn("memcached", argv)
        _proc.wait_until(
            lambda: _proc.port_open("127.0.0.1", self._memcached_port),
            timeout=10,
            what="memcached",
        )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUCIO_")}
        for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
            env.pop(key, None)
        env["RUCIO_CONFIG"] = str(self.server_config)
        env["PATH"] = f"{self.settings.rucio_venv / 'bin'}:{env.get('PATH', '')}"
        return env

    def _commands(self) -> dict[str, list[str]]:
        bin_dir = self.settings.rucio_venv / "bin"
        sleep = ["--sleep-time", str(max(1, round(self.settings.daemon_sleep)))]
        commands = {"server": self._gunicorn_argv()}
        for name in self.settings.daemons:
            commands[name] = [str(bin_dir / f"rucio-{name}"), *DAEMONS[name], *sleep]
        return commands

    def _gunicorn_argv(self) -> list[str]:
        venv = self.settings.rucio_venv
        argv = [
            str(venv / "bin" / "gunicorn"),
            "--bind", f"127.0.0.1:{self._port}",
            "--workers", str(self.settings.gunicorn_workers),
            "--timeout", "600",
        ]  # fmt: skip
        if self.settings.access_log:
            argv += ["--access-logfile", str(self.access_log)]
        if _gunicorn_has_control_socket(venv):
            argv.append("--no-control-socket")
        return [*argv, "rucio.web.rest.flaskapi.v1.main:application"]

    def _ping(self) -> bool:
        self.raise_if_exited()
        try:
            with urllib.request.urlopen(f"{self.rucio_host}/ping", timeout=2) as response:  # noqa: S310  # our own http URL
                return bool(response.status == 200)  # noqa: PLR2004
        except OSError:
            return False

    def _write_configs(self) -> None:
        _write_ini(self.server_config, _server_sections(self))
        _write_ini(self.client_config, _client_sections(self))
        _write_ini(self.workdir / "etc" / "alembic.ini", _alembic_sections(self.settings))


def _gunicorn_has_control_socket(venv: Path) -> bool:
    """Tell whether this gunicorn knows --no-control-socket (without it, it writes ~/.gunicorn)."""
    configs = venv.glob("lib/python3*/site-packages/gunicorn/config.py")
    return any("--no-control-socket" in path.read_text() for path in configs)


def _write_ini(path: Path, sections: dict[str, dict[str, str]]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    with path.open("w") as out:
        parser.write(out)


_API_ENDPOINTS = (
    "accounts", "auth", "config", "credentials", "dids", "export", "heartbeats", "identities",
    "import", "lifetime_exceptions", "locks", "meta_conventions", "ping", "redirect", "replicas",
    "requests", "rses", "rules", "scopes", "subscriptions", "traces", "vos",
)  # fmt: skip


def _server_sections(stack: RucioStack) -> dict[str, dict[str, str]]:
    s, work = stack.settings, stack.workdir
    amqp = urlsplit(s.amqp_url)
    broker = {"brokers": "127.0.0.1", "port": str(s.stomp_port), "username": amqp.username or "guest",
              "password": amqp.password or "guest"}  # fmt: skip
    return {
        "common": {"logdir": str(work / "log"), "loglevel": "INFO",
                   "mailtemplatedir": str(s.rucio_venv / "rucio" / "etc" / "mail_templates")},
        "database": {"default": PG_URL.format(db=s.db_name)},
        "cache": {"url": f"127.0.0.1:{stack.memcached_port}"},
        "bootstrap": {"userpass_identity": USERPASS[0], "userpass_pwd": USERPASS[1]},
        "alembic": {"cfg": str(work / "etc" / "alembic.ini")},
        "api": {"endpoints": ", ".join(_API_ENDPOINTS)},
        "policy": {"permission": "generic", "schema": "generic", "lfn2pfn_algorithm_default": "hash"},
        "conveyor": {"scheme": "file,mock,root", "transfertool": "mock", "ftshosts": "mock://localhost"},
        "trace": {"tracedir": str(work / "trace"), **broker, "topic": "/topic/rucio.tracer"},
        "hermes": {"services_list": "activemq"},
        "messaging-hermes": {
            **broker, "nonssl_port": str(s.stomp_port), "use_ssl": "False",
            "broker_virtual_host": s.amqp_vhost,
            "destination": f"/exchange/{s.hermes_exchange}/{s.instance}",
        },
    }  # fmt: skip


def _client_sections(stack: RucioStack) -> dict[str, dict[str, str]]:
    username, password = USERPASS
    client = {
        "rucio_host": stack.rucio_host, "auth_host": stack.rucio_host, "auth_type": "userpass",
        "username": username, "password": password, "account": "root",
        "auth_token_file_path": str(stack.workdir / "tokens" / "cli" / "auth_token"),
        "request_retries": "3",
    }  # fmt: skip
    return {
        "common": {"logdir": str(stack.workdir / "log"), "loglevel": "INFO"},
        "client": client,
    }


def _alembic_sections(settings: RucioStackSettings) -> dict[str, dict[str, str]]:
    """Rucio's alembic.ini template (its logging sections) pointed at our database."""
    template = configparser.ConfigParser(interpolation=None, strict=False)
    template.read(settings.rucio_venv / "rucio" / "etc" / "alembic.ini.template")
    sections = {name: dict(template[name]) for name in template.sections()}
    site = next(settings.rucio_venv.glob("lib/python3*/site-packages"))
    sections["alembic"] = {
        "sqlalchemy.url": PG_URL.format(db=settings.db_name),
        "script_location": str(site / "rucio" / "db" / "sqla" / "migrate_repo"),
    }
    return sections


def main(argv: list[str] | None = None) -> int:
    """`up --workdir DIR`: start a stack, build the lake, stay up until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m dlaas_devstack.rucio")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run a local Rucio in the foreground")
    up.add_argument("--workdir", type=Path, required=True)
    up.add_argument("--db-name", default="dlaas_rucio", help="dropped and recreated")
    args = parser.parse_args(argv)
    # SIGTERM behaves like Ctrl-C, so the stack's context manager always stops every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        settings = RucioStackSettings(workdir=args.workdir, db_name=args.db_name)
        with RucioStack(settings) as stack:
            build_lake(stack)
            print(f"rucio_host={stack.rucio_host}")
            print(f"client_config={stack.client_config}", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
