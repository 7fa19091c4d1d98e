"""The spine, end to end: `dlaas stage --wait` in a terminal, real Rucio with its daemons and
hermes over STOMP, the four services as their own processes on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
import zlib
from pathlib import Path

import aio_pika
import pytest

from dlaas.bus import topology
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, make_dataset, rse_dir
from dlaas_devstack.rucio import RucioStack
from dlaas_devstack.services import DlaasConfig, DlaasServices

pytestmark = [pytest.mark.e2e, pytest.mark.rucio]

CACHE = "root://127.0.0.1:1095"


async def _spy(
    connection: aio_pika.abc.AbstractConnection, user: str
) -> aio_pika.abc.AbstractQueue:
    """A queue bound to everything ``user`` could be sent."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.NOTIFY, f"user.{topology.user_segment(user)}.#")
    return queue


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


async def _dlaas(
    *args: str, user: str, broker: Vhost
) -> tuple[int, list[dict[str, object]]]:
    """Run the real `dlaas` command as ``user``; its exit code and JSON lines."""
    env = {**os.environ, "DLAAS_BUS__URL": broker.url(user)}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "dlaas"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode is not None
    print(err.decode(), file=sys.stderr)
    lines = out.decode().splitlines()
    return process.returncode, [json.loads(x) for x in lines if x.startswith("{")]


async def test_a_dataset_staged_in_a_terminal_becomes_ready_files_for_its_user_only(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> None:
    name = f"ds-{uuid.uuid4().hex[:6]}"
    files = make_dataset(rucio_stack, "user.alice", name, 3)
    config = DlaasConfig(
        workdir=tmp_path,
        amqp_url=broker.url(),
        rucio_host=rucio_stack.rucio_host,
        mount_path=rse_dir(rucio_stack, NOTEBOOK),
        path_begins_at=2,
        cache_endpoints=(CACHE,),
    )
    with DlaasServices(config) as services:
        bob_connection = await aio_pika.connect(broker.url("bob"))
        bob = await _spy(bob_connection, "bob")
        started = time.monotonic()
        code, notes = await _dlaas(
            "stage",
            f"user.alice:{name}",
            "--rse",
            NOTEBOOK,
            "--wait",
            "--json",
            "--timeout",
            "180",
            user="alice",
            broker=broker,
        )
        elapsed = time.monotonic() - started
        await asyncio.sleep(1)
        leaked = await bob.get(fail=False)
        await bob_connection.close()
        assert leaked is None, "bob received alice's notification"
        request_id = str(notes[0]["request_id"])
        status_code, (status,) = await _dlaas("--json", "status", request_id, user="alice",
                                              broker=broker)  # fmt: skip
        wait_code, _ = await _dlaas("wait", request_id, user="alice", broker=broker)
        bob_code, (bobs,) = await _dlaas("--json", "status", request_id, user="bob",
                                         broker=broker)  # fmt: skip
        _, inbox = await _dlaas("--json", "inbox", user="alice", broker=broker)
        logs = "".join(
            path.read_text(errors="replace") for path in services.logs().values()
        )
        metrics = {
            name: _get(port, "/metrics") for name, port in services.http_ports.items()
        }
        assert all(
            _get(port, "/readyz") == "ready\n" for port in services.http_ports.values()
        )
    print(f"end to end: {elapsed:.1f} s for {len(files)} files")
    assert code == 0, notes
    ready = {str(n["did"]): n for n in notes if n["kind"] == "file-ready"}
    assert sorted(ready) == sorted(f"user.alice:{f.name}" for f in files)
    for file in files:
        note = ready[f"user.alice:{file.name}"]
        pfn = f"root://127.0.0.1:{rucio_stack.rse_port}/{file.pfn_path_at(NOTEBOOK)}"
        assert note["pfn"] == pfn
        assert note["cache_url"] == f"{CACHE}//{pfn}"
        view = Path(str(note["path"]))
        assert view == config.views / "alice" / "user.alice" / file.name
        assert f"{zlib.adler32(view.read_bytes()):08x}" == file.adler32
    assert (
        'dlaas_messages_total{outcome="ok",queue="stager.requests"' in metrics["stager"]
    )
    assert 'queue="fuse_agent.files",type="file-ready.v1"' in metrics["fuse-agent"]
    assert (status_code, status["state"], status["waiting"]) == (0, "completed", 0)
    paths = status["ready"]
    assert isinstance(paths, dict)
    assert sorted(paths.values()) == sorted(str(n["path"]) for n in ready.values())
    assert wait_code == 0  # already complete: returns at once
    assert (bob_code, bobs["reason"]) == (1, "no such request of yours")
    mine = [
        n for n in inbox if n["request_id"] == request_id
    ]  # alice's earlier requests too
    assert sorted(str(n["kind"]) for n in mine) == sorted(
        ["accepted", "file-ready", "file-ready", "file-ready", "completed"]
    )  # the inbox kept all of it for later; statuses never go there
    # no credential in any service's log of the whole run (Rucio's password, the broker URL's)
    assert "secret" not in logs
    assert f":{broker.url().split(':')[2].split('@')[0]}@" not in logs
    assert '"request_id"' in logs  # the lines are structured JSON with the request's id
    completed = [n for n in notes if n["kind"] == "completed"]
    assert len(completed) == 1
    assert completed[0]["files_ready"] == 3
