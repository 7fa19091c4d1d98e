"""Real XRootD origins, XCaches and xrootdfs FUSE mounts for integration tests and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger(__name__)

_RUN_AS = "xrootd"  # the Debian package's service user; xrootd refuses to run as root
_HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 10.0
_PROBE_TIMEOUT = 2.0
_POLL = 0.02
# Read by the XRootD client at start-up: without them a dead server hangs callers for minutes.
_FAST_FAIL_ENV = {
    "XRD_CONNECTIONWINDOW": "2",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "10",
    "XRD_STREAMTIMEOUT": "10",
}
# Popen objects of the servers and mounts we started, kept so that they are reaped on stop
# (and not garbage-collected while running, which warns).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class XRootDServer:
    """A running xrootd process (origin or cache)."""

    name: str
    port: int
    pid: int
    url: str


@dataclass(frozen=True)
class FuseMount:
    """A running xrootdfs FUSE mount."""

    mountpoint: Path
    source: str
    pid: int


# --- servers -----------------------------------------------------------------------------


def start_origin(
    workdir: Path, data_dir: Path, *, port: int | None = None, name: str = "origin"
) -> XRootDServer:
    """Start an origin exporting ``/`` from ``data_dir`` (``//data/x`` is ``data_dir/data/x``)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    home = _prepare_home(workdir, name)
    lines = [
        *_common_config(port, home),
        f"oss.localroot {data_dir}",
        "ofs.trace open close",  # one ofs_open log line per open: a miss counter for tests
        "xrootd.chksum adler32",  # Rucio's checksum, computed on query
    ]
    _make_accessible(data_dir)
    return _launch(home, name, port, lines)


def start_xcache(
    workdir: Path,
    *,
    origin: XRootDServer | None,
    port: int | None = None,
    name: str = "xcache",
    monitor_udp_port: int | None = None,
) -> XRootDServer:
    """Start an XCache in front of ``origin``, or in forwarding mode when ``origin`` is None."""
    port = port or _free_port()
    home = _prepare_home(workdir, name)
    cache_dir = home / "cache"
    cache_dir.mkdir(exist_ok=True)
    target = f"{_HOST}:{origin.port}" if origin else "="
    lines = [
        *_common_config(port, home),
        "ofs.osslib libXrdPss.so",
        f"pss.origin {target}",
        "pss.cachelib libXrdPfc.so",
        f"oss.localroot {cache_dir}",
        "pfc.ram 1g",  # less is refused and the server exits
        "pfc.blocksize 1m",
        "pfc.diskusage 0.90 0.95",
        # An uncached read then fails in ~20 ms when the origin is down instead of hanging.
        "pss.setopt ConnectionRetry 1",
        "pss.setopt ConnectionWindow 2",
        "pss.setopt RequestTimeout 5",
    ]
    if monitor_udp_port is not None:
        lines.append(
            f"xrootd.mongstream pfc use flush 1s send json insthdr {_HOST}:{monitor_udp_port}"
        )
    return _launch(home, name, port, lines)


def stop_server(server: XRootDServer, timeout: float = 5.0) -> None:
    """Stop a server: SIGTERM, wait up to ``timeout``, then SIGKILL. Idempotent."""
    _terminate(server.pid, timeout)
    log.info("xrootd_stopped", server=server.name, port=server.port, pid=server.pid)


def restart_server(server: XRootDServer, workdir: Path) -> XRootDServer:
    """Stop ``server`` if it still runs and start it again with the same config and port."""
    stop_server(server)
    home = _home(workdir, server.name)
    if not (home / "xrootd.cfg").is_file():
        raise FileNotFoundError(f"no config for {server.name} under {workdir}")
    _make_searchable(home)  # a pytest session started since may have reset them
    for line in (home / "xrootd.cfg").read_text(encoding="utf-8").splitlines():
        if line.startswith("oss.localroot "):
            _make_searchable(Path(line.split(maxsplit=1)[1]))
    return _spawn(home, server.name, server.port)


def log_path(workdir: Path, server: XRootDServer) -> Path:
    """The server's log file (``ofs_open`` lines of an origin count its opens)."""
    return _home(workdir, server.name) / "logs" / server.name / "xrootd.log"


def wait_ready(url: str, timeout: float = 10.0) -> None:
    """Wait until ``url`` answers ``query config version``; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while not _probe(url, min(_PROBE_TIMEOUT, max(deadline - time.monotonic(), 0.1))):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout} s")
        time.sleep(_POLL)


def _home(workdir: Path, name: str) -> Path:
    return workdir.resolve() / name


def _prepare_home(workdir: Path, name: str) -> Path:
    home = _home(workdir, name)
    for sub in ("admin", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


def _common_config(port: int, home: Path) -> list[str]:
    # No "all.role server": a standalone server with it waits for a cmsd forever.
    return [
        f"xrd.port {port}",
        "all.export /",
        f"all.adminpath {home / 'admin'}",
        f"all.pidpath {home / 'admin'}",
        "xrd.allow host localhost",
    ]


def _launch(home: Path, name: str, port: int, lines: list[str]) -> XRootDServer:
    (home / "xrootd.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _make_accessible(home)
    return _spawn(home, name, port)


def _spawn(home: Path, name: str, port: int) -> XRootDServer:
    proc = _start_child(_server_command(home, name), home / "stdout.log")
    server = XRootDServer(
        name=name, port=port, pid=proc.pid, url=f"root://{_HOST}:{port}"
    )
    _await_started(server, proc, home)
    log.info("xrootd_started", server=name, port=port, pid=proc.pid, home=str(home))
    return server


def _await_started(
    server: XRootDServer, proc: subprocess.Popen[bytes], home: Path
) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not _probe(server.url, _PROBE_TIMEOUT):
        if proc.poll() is not None or time.monotonic() >= deadline:
            _terminate(proc.pid, 1.0)
            raise RuntimeError(
                f"xrootd {server.name} did not start (exit {proc.returncode}): "
                f"{_log_tail(home)}"
            )
        time.sleep(_POLL)


def _probe(url: str, timeout: float) -> bool:
    cmd = ["xrdfs", url, "query", "config", "version"]
    env = os.environ | _FAST_FAIL_ENV
    try:
        done = subprocess.run(
            cmd, capture_output=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _log_tail(home: Path, lines: int = 15) -> str:
    logs = sorted(home.rglob("*.log"), key=lambda p: p.stat().st_mtime)
    text = "".join(p.read_text(errors="replace") for p in logs[-2:])
    return " | ".join(text.strip().splitlines()[-lines:])


def _server_command(home: Path, name: str) -> list[str]:
    """Run xrootd as the service user when we are root (it refuses to run as root).

    The service user needs every parent of the data and work dirs searchable, and pytest
    resets ``/tmp/pytest-of-root`` to 0700 whenever a session starts: a concurrent session
    would break running servers. So setpriv adds CAP_DAC_READ_SEARCH, which keeps their
    opens working (xrootd's access() calls ignore capabilities: search bits are added too).
    """
    cmd = ["xrootd", "-c", str(home / "xrootd.cfg"), "-n", name, "-w", str(home)]
    cmd += ["-l", str(home / "logs" / "xrootd.log")]
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return cmd
    if setpriv is None:
        return [*cmd, "-R", _RUN_AS]
    user = ["--reuid", _RUN_AS, "--regid", _RUN_AS, "--init-groups"]
    cap = ["--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search"]
    return [setpriv, *user, *cap, "--", *cmd]


def _make_accessible(path: Path) -> None:
    """Let the service user own ``path`` and search its parents, when we are root."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(_RUN_AS)
    for root, dirs, files in os.walk(path):
        for entry in (Path(root), *(Path(root, n) for n in dirs + files)):
            os.lchown(entry, user.pw_uid, user.pw_gid)  # lchown: admin dirs hold symlinks
    _make_searchable(path)


def _make_searchable(path: Path) -> None:
    """Add the search bit (not read) to parents that lack it: pytest's tmp dirs are 0700."""
    if os.geteuid() != 0:
        return
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            log.info("made_dir_searchable", path=str(parent))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --- processes ---------------------------------------------------------------------------


def _start_child(
    cmd: list[str], output: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with output.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, SIGKILL; reap our own children. Idempotent."""
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        _terminate_child(proc, timeout)
        return
    if not _is_ours(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, timeout)


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` still runs xrootd or xrootdfs: a reaped pid may have been reused."""
    try:
        return b"xrootd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _terminate_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child: gone or a zombie counts as exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in {"Z", "X"}:
            return True
        time.sleep(_POLL)
    return False


# --- FUSE --------------------------------------------------------------------------------


def fuse_available() -> tuple[bool, str]:
    """Whether xrootdfs mounts can work here, and why not."""
    if os.geteuid() != 0:
        return False, "FUSE mounts need root here (/dev/fuse is 0600)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return False, "/dev/fuse missing or not usable"
    for tool in ("xrootdfs", "fusermount3"):
        if shutil.which(tool) is None:
            return False, f"{tool} not on PATH"
    return True, "ok"


def mount_xrootdfs(source: str, mountpoint: Path, *, timeout: float = 10.0) -> FuseMount:
    """Mount ``source`` (``root://host:port//dir``) at ``mountpoint`` with xrootdfs.

    Returns once the mount answers statfs. xrootdfs logs to ``<mountpoint>.xrootdfs.log``.
    """
    mountpoint = mountpoint.resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    if _is_mounted(mountpoint):
        raise RuntimeError(f"{mountpoint} is already a mount point")
    log_file = mountpoint.with_name(f"{mountpoint.name}.xrootdfs.log")
    cmd = ["xrootdfs", str(mountpoint), "-f", "-o", f"rdr={source}"]
    proc = _start_child(cmd, log_file, os.environ | _FAST_FAIL_ENV)
    mount = FuseMount(mountpoint=mountpoint, source=source, pid=proc.pid)
    try:
        _await_mounted(mount, proc, timeout)
    except BaseException:
        unmount(mount)
        raise
    log.info("fuse_mounted", mount=str(mountpoint), pfn=source, pid=proc.pid)
    return mount


def _await_mounted(
    mount: FuseMount, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    if not _wait_until(
        lambda: _is_mounted(mount.mountpoint) or proc.poll() is not None, timeout
    ):
        raise TimeoutError(
            f"xrootdfs did not mount {mount.mountpoint} within {timeout} s"
        )
    if proc.poll() is not None:
        raise RuntimeError(f"xrootdfs exited with {proc.returncode}: {mount.mountpoint}")
    # The mount can be listed before xrootdfs answers: its FUSE init first asks the server
    # for its data servers (seen taking 5 s when several mounts start at once).
    if is_stale(mount.mountpoint, timeout=max(deadline - time.monotonic(), 0.1)):
        raise TimeoutError(
            f"xrootdfs mount {mount.mountpoint} not answering after {timeout} s"
        )


def unmount(m: FuseMount) -> None:
    """Unmount (lazily when busy) and stop the xrootdfs process. Idempotent."""
    if _is_mounted(m.mountpoint):
        done = _fusermount("-u", m.mountpoint)
        if done.returncode != 0:
            log.warning(
                "fuse_unmount_lazy", mount=str(m.mountpoint), error=done.stderr.strip()
            )
            _fusermount("-u", "-z", m.mountpoint)
    _terminate(m.pid, 5.0)
    log.info("fuse_unmounted", mount=str(m.mountpoint), pid=m.pid)


def is_stale(mountpoint: Path, timeout: float = 2.0) -> bool:
    """Whether the mount answers ENOTCONN (xrootdfs is gone) or hangs past ``timeout``.

    Probes with statfs, which always reaches the FUSE daemon: a plain stat can be answered
    from the kernel's attribute cache (xrootdfs sets attr_timeout=10) after xrootdfs died.
    A dead origin does not make the mount stale by this test (statfs still answers).
    """
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            os.statvfs(mountpoint)
        except OSError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    # A daemon thread: a stat stuck in the kernel cannot be cancelled, only abandoned.
    worker = threading.Thread(target=probe, daemon=True, name="fuse-stale-probe")
    worker.start()
    worker.join(timeout)
    if not outcome:
        return True
    error = outcome[0]
    return isinstance(error, OSError) and error.errno == errno.ENOTCONN


def _fusermount(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = ["fusermount3", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)


def _is_mounted(mountpoint: Path) -> bool:
    """Read the mount table: unlike os.path.ismount it never touches a hung FUSE mount."""
    escaped = str(mountpoint).translate(
        {32: r"\040", 9: r"\011", 10: r"\012", 92: r"\134"}
    )
    with Path("/proc/self/mounts").open(encoding="utf-8") as mounts:
        return any(line.split(" ")[1] == escaped for line in mounts)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


# --- cache monitoring --------------------------------------------------------------------


class PfcMonitorListener:
    """UDP listener for the XCache (pfc) g-stream; keeps the parsed ``file_close`` records."""

    def __init__(self, host: str = _HOST) -> None:
        self.host = host
        self.port: int | None = None  # set by start()
        self.records: list[dict[str, Any]] = []  # parsed JSON, as the cache sends it
        self._transport: asyncio.DatagramTransport | None = None
        self._arrived = asyncio.Event()

    async def start(self, port: int = 0) -> int:
        """Bind the UDP socket and return its port."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _PfcProtocol(self), local_addr=(self.host, port)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        log.info("pfc_monitor_listening", port=self.port)
        return self.port

    async def stop(self) -> None:
        """Close the socket. Idempotent."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 45.0
    ) -> dict[str, Any]:
        """Return the first record (old or new) matching ``predicate``; TimeoutError after ``timeout``.

        XCache sends a file's record when it releases the file: 30 s after the close when
        the file's blocks were still being written then (XrdPfc's deferred detach).
        """

        def found() -> dict[str, Any] | None:
            return next((r for r in self.records if predicate(r)), None)

        async with asyncio.timeout(timeout):
            while (record := found()) is None:
                self._arrived.clear()  # no await since found(): nothing can slip in between
                await self._arrived.wait()
        return record

    def _received(self, data: bytes) -> None:
        new = parse_pfc_datagram(data)
        if new:
            self.records.extend(new)
            self._arrived.set()


class _PfcProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: PfcMonitorListener) -> None:
        self._listener = listener

    def datagram_received(self, data: bytes, _addr: tuple[str | Any, int]) -> None:
        self._listener._received(data)  # noqa: SLF001 - the protocol is the listener's half


def parse_pfc_datagram(data: bytes) -> list[dict[str, Any]]:
    """Parse one g-stream datagram: a JSON header line, then NUL-terminated JSON records.

    Only ``file_close`` records are kept (the cache also sends a ``{"code":"="...}``
    identification datagram).
    """
    records: list[dict[str, Any]] = []
    for chunk in data.split(b"\0"):
        text = chunk.decode("utf-8", errors="replace").strip()
        if text.startswith('{"code"'):  # the header line before the first record
            text = text.partition("\n")[2].strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            log.warning("pfc_record_unparsed", text=text[:200])
            continue
        if isinstance(record, dict) and record.get("event") == "file_close":
            records.append(record)
    return records
