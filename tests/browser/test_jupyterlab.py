"""JupyterLab shows a user's dlaas notifications: real JupyterLab, RabbitMQ and headless Chromium.

The extension (jupyter/, built by jupyter/build.sh into its own virtualenv) runs in a real
JupyterLab as broker user carol with the production permissions of an end user; the notifier's
messages are published on a throwaway vhost; Debian's Chromium, driven by playwright-core, must
show them as JupyterLab notifications. The screenshot goes to docs/img/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote
from uuid import UUID, uuid4

import aio_pika
import httpx
import pytest

from dlaas.bus import topology
from dlaas.contracts import Notification
from dlaas_devstack.broker import Vhost
from dlaas_notifier.permissions import ManagementApi, user_grant
from tests.broker import need

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
JUPYTER = ROOT / "jupyter"
SCREENSHOT = ROOT / "docs" / "img" / "jupyterlab-notifications.png"
DRIVER = Path(__file__).with_name("jupyterlab_driver.cjs")
CHROMIUM = Path(os.environ.get("DLAAS_TEST_CHROMIUM", "/usr/bin/chromium"))
USER = "carol"  # her own user: the end-user permissions set here must not touch alice's
OTHER = "bob"


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    log: Path

    def endpoint(self, path: str, **query: object) -> str:
        params = "&".join(
            f"{k}={quote(str(v))}" for k, v in {**query, "token": self.token}.items()
        )
        return f"{self.url}{path}?{params}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def lab_venv() -> Path:
    """The extension built (or found built) by jupyter/build.sh, in its own virtualenv."""
    for tool in ("node", "npm", "python3"):
        if shutil.which(tool) is None:
            need(f"{tool} is missing (jupyter/build.sh builds the extension with it)")
    if not CHROMIUM.exists():
        need(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    venv = Path(os.environ.get("DLAAS_JUPYTER_VENV", JUPYTER / ".venv"))
    started = time.monotonic()
    build = subprocess.run(
        [str(JUPYTER / "build.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(
            f"jupyter/build.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        )
    print(f"\n[timing] jupyter/build.sh: {time.monotonic() - started:.1f} s")
    return venv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _end_user(broker: Vhost, user: str) -> None:
    """Create ``user`` with exactly the rights an end user gets in production."""
    broker.add_user(user)
    admin = broker.admin
    api = ManagementApi(admin.api, admin.user, admin.password)
    asyncio.run(api.apply(broker.name, user_grant(user)))


@pytest.fixture(scope="module")
def lab(
    lab_venv: Path, broker: Vhost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """JupyterLab with the extension, as ``USER``, on a free port, isolated from ~/.jupyter."""
    _end_user(broker, USER)
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    # JupyterLab's own "receive news?" question would cover the toasts under test.
    disabled = {"@jupyterlab/apputils-extension:announcements": True}
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": disabled})
    )
    (tmp_path / "work").mkdir()
    env = {
        **{
            k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "DLAAS_"))
        },
        "DLAAS_BUS__URL": broker.url(USER),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    port, token = _free_port(), uuid4().hex
    log = tmp_path / "jupyterlab.log"
    args = [
        str(lab_venv / "bin" / "jupyter"),
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={tmp_path / 'work'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # no look-ups on PyPI
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        server = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Lab(f"http://127.0.0.1:{port}", token, log)
    try:
        _wait_relay_connected(running, server)
        print(
            f"[timing] JupyterLab up, relay connected: {time.monotonic() - started:.1f} s"
        )
        yield running
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def _wait_relay_connected(lab: Lab, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited ({server.returncode}):\n{lab.log_tail()}")
            try:
                batch = http.get(lab.endpoint("/dlaas/notifications", wait=0)).json()
            except (httpx.HTTPError, json.JSONDecodeError):
                batch = {}
            if batch.get("status", {}).get("connected"):
                return
            time.sleep(0.3)
    pytest.fail(f"the dlaas relay did not connect within 60 s:\n{lab.log_tail()}")


class Publish(Protocol):
    async def __call__(
        self, note: Notification, *, routing_user: str | None = None
    ) -> None: ...


@asynccontextmanager
async def notifier(broker: Vhost) -> AsyncIterator[Publish]:
    """Publish as the notifier does: exchange dlaas.notify, key user.<user>.<request>."""
    connection = await aio_pika.connect(broker.url())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            topology.NOTIFY, aio_pika.ExchangeType.TOPIC, durable=True
        )

        async def publish(note: Notification, *, routing_user: str | None = None) -> None:
            key = topology.notify_routing_key(
                routing_user or note.user, str(note.request_id)
            )
            message = aio_pika.Message(
                note.model_dump_json().encode(),
                type=Notification.event_type,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(note.event_id),
            )
            await exchange.publish(message, routing_key=key)

        yield publish


def note(
    request_id: UUID, kind: str, text: str, user: str = USER, **fields: Any
) -> Notification:
    return Notification(
        request_id=request_id,
        user=user,
        kind=kind,
        text=text,
        source_event_id=str(uuid4()),
        **fields,
    )


def ready(request_id: UUID, name: str) -> Notification:
    did, path = f"user.{USER}:{name}", f"/home/jovyan/dlaas/user.{USER}/{name}"
    return note(
        request_id,
        "file-ready",
        f"{did} is ready at {path}",
        did=did,
        path=path,
        cache_url=f"root://xcache-1.example.org:1094//root://eulake.example.org:1094//eos/eulake_1/{name}",
        bytes=2_100_000,
    )


DONE_TEXT = "3 files ready (6.3 MB), 0 failed, in 41.2 s"
RUNNING_TEXT = f"user.{USER}:higgs/f2.root is ready"
FAILED_TEXT = (
    f"request failed: user.{USER}:nope is not in Rucio; check its scope and name"
)
OTHER_TEXT = "bob's file is ready"
SPOOFED_TEXT = "a message for bob on carol's routing key"


async def _driver(lab: Lab, screenshot: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "NODE_PATH": str(JUPYTER / "node_modules"),
        "CHROMIUM": str(CHROMIUM),
    }
    expected = [f"dlaas: {DONE_TEXT}", RUNNING_TEXT, f"dlaas: {FAILED_TEXT}"]
    return await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        lab.endpoint("/lab"),
        str(screenshot),
        *expected,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _events(process: asyncio.subprocess.Process) -> AsyncIterator[dict[str, Any]]:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        if line.startswith(b"{"):
            yield json.loads(line)


async def test_jupyterlab_shows_dlaas_notifications(
    lab: Lab, broker: Vhost, tmp_path: Path
) -> None:
    done, running, failed, theirs = uuid4(), uuid4(), uuid4(), uuid4()
    repeated = ready(done, "run7/f1.root")
    screenshot = tmp_path / "notifications.png"
    started = time.monotonic()
    async with notifier(broker) as publish:
        # before any tab is open: the server extension keeps it for the tab that opens later
        await publish(
            note(
                done,
                "accepted",
                "3 files (6.3 MB) requested at NOTEBOOK, 0 already there",
                files_total=3,
            )
        )
        driver = await _driver(lab, screenshot)
        events = _events(driver)
        first = await asyncio.wait_for(anext(events), 90)
        assert first["event"] == "ready", first
        print(
            f"[timing] JupyterLab loaded in Chromium: {time.monotonic() - started:.1f} s"
        )
        await publish(note(theirs, "file-ready", OTHER_TEXT, user=OTHER))
        await publish(
            note(theirs, "file-ready", SPOOFED_TEXT, user=OTHER), routing_user=USER
        )
        for message in (
            repeated,
            ready(done, "run7/f2.root"),
            repeated,
            ready(done, "run7/f3.root"),
        ):
            await publish(message)
        await publish(
            note(
                done,
                "completed",
                DONE_TEXT,
                files_ready=3,
                files_failed=0,
                bytes=6_300_000,
            )
        )
        await publish(
            note(
                running,
                "accepted",
                "5 files (10.5 MB) requested at NOTEBOOK, 1 already there",
                files_total=5,
            )
        )
        await publish(ready(running, "higgs/f1.root"))
        await publish(ready(running, "higgs/f2.root"))
        await publish(note(failed, "failed", FAILED_TEXT, reason="DID not found"))
        last = await asyncio.wait_for(anext(events), 120)
        _, stderr = await driver.communicate()
    assert last["event"] == "done", f"{last}\n{stderr.decode()[-3000:]}\n{lab.log_tail()}"
    print(f"[timing] notifications shown: {time.monotonic() - started:.1f} s")

    # Toastify's type class; JupyterLab keeps a toast's first jp-Notification-Toast-* class.
    toasts = {t["text"].split("\n")[0]: t["className"] for t in last["toasts"]}
    by_text = lambda part: next(cls for text, cls in toasts.items() if part in text)  # noqa: E731
    assert "Toastify__toast--success" in by_text(DONE_TEXT), toasts
    assert "jp-Notification-Toast-in-progress" in by_text(RUNNING_TEXT), toasts
    assert "Toastify__toast--success" not in by_text(RUNNING_TEXT), toasts
    assert "dlaas 2/5: " in next(t for t in toasts if RUNNING_TEXT in t), toasts
    assert "Toastify__toast--error" in by_text(FAILED_TEXT), toasts
    assert "Copy 3 paths" in next(
        t["text"] for t in last["toasts"] if DONE_TEXT in t["text"]
    )
    assert not any(OTHER_TEXT in t or SPOOFED_TEXT in t for t in toasts), toasts
    assert len(toasts) == 3, toasts  # one notification per request
    assert not [e for e in last["errors"] if "dlaas" in e], last["errors"]
    if os.environ.get("DLAAS_UPDATE_DOCS"):  # the README's picture; a plain run leaves it
        shutil.copyfile(screenshot, SCREENSHOT)

    # What the relay kept: carol's, each once, in order.
    async with httpx.AsyncClient(timeout=10) as http:
        kept = (await http.get(lab.endpoint("/dlaas/notifications", wait=0))).json()
    kinds = [(n["request_id"], n["kind"]) for n in kept["notifications"]]
    assert kinds[:5] == [(str(done), "accepted")] + [(str(done), "file-ready")] * 3 + [
        (str(done), "completed")
    ]
    assert {n["user"] for n in kept["notifications"]} == {USER}
    assert [n["seq"] for n in kept["notifications"]] == list(range(1, len(kinds) + 1))


def _connections(broker: Vhost, user: str) -> list[dict[str, Any]]:
    found = broker.admin.call("GET", f"/vhosts/{quote(broker.name, safe='')}/connections")
    assert isinstance(found, list)
    return [c for c in found if c.get("user") == user]


async def test_relay_reconnects_and_long_polls(lab: Lab, broker: Vhost) -> None:
    """The broker drops the relay's connection: it comes back, and a waiting poll gets the next one."""
    async with httpx.AsyncClient(timeout=60) as http:
        first = (await http.get(lab.endpoint("/dlaas/notifications", wait=0))).json()
        # the management API lists a connection once its stats came in (every few s)
        async with asyncio.timeout(30):
            while not (names := [c["name"] for c in _connections(broker, USER)]):
                await asyncio.sleep(0.5)
        assert len(names) == 1, names
        broker.admin.call("DELETE", f"/connections/{quote(names[0], safe='')}")

        async def connected_again() -> None:
            while True:
                batch = (
                    await http.get(lab.endpoint("/dlaas/notifications", wait=0))
                ).json()
                if batch["status"]["connected"] and batch["status"]["user"] == USER:
                    seen = _connections(broker, USER)
                    if seen and seen[0]["name"] != names[0]:
                        return
                await asyncio.sleep(0.2)

        await asyncio.wait_for(connected_again(), 30)
        # A long-poll opened before the message exists answers when it arrives.
        poll = asyncio.create_task(
            http.get(
                lab.endpoint(
                    "/dlaas/notifications",
                    epoch=first["epoch"],
                    after=first["cursor"],
                    wait=25,
                )
            )
        )
        await asyncio.sleep(0.5)
        assert not poll.done()
        request = uuid4()
        sent = time.monotonic()
        async with notifier(broker) as publish:
            await publish(
                note(
                    request,
                    "accepted",
                    "1 file (1 B) requested at NOTEBOOK, 0 already there",
                    files_total=1,
                )
            )
        batch = (await asyncio.wait_for(poll, 10)).json()
        latency = time.monotonic() - sent
    assert [n["request_id"] for n in batch["notifications"]] == [str(request)]
    assert latency < 2, latency
