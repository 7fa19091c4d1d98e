"""The real Rucio end to end: the delay dlaas adds after Rucio has done its part.

``python -m bench.rucio_e2e [--files 1000]`` (also ``python -m bench --only rucio-e2e``)

A local Rucio with every daemon (conveyor with the mock transfertool, judge, hermes over
STOMP to our throwaway vhost), a dataset of N real files at ORIGIN (their bytes also under
NOTEBOOK's folder: the mock transfertool moves nothing), the four dlaas services as their
own processes (the real stager against that Rucio). One ``rule-requested`` as alice; then
Rucio's rules are polled every 0.5 s while alice's inbox is read. Printed: Rucio's own time
from the rules' creation (their ``created_at``) to all of them OK, beside the time from the
same moment to the last ``file-ready`` and to ``completed`` reaching alice. A queue of ours
bound to ``rucio.hermes`` times when each ``transfer-done`` reached the broker: from there
to the file's ``file-ready`` at alice is dlaas's own share (the rest is Rucio and hermes).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import datetime as dt
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.common import Quantiles, load_average, throwaway_vhost, wait_logged, workspace
from bench.stager_rucio import _drop
from dlaas.bus import batch, topology
from dlaas.bus.connection import Bus
from dlaas.contracts import RequestAccepted, RequestFailed, RuleRequested
from dlaas.settings import BusSettings
from dlaas_devstack import _proc
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, build_lake, make_dataset, rse_dir
from dlaas_devstack.rucio import RucioStack, RucioStackSettings
from dlaas_devstack.services import SERVICES, DlaasConfig

SCOPE, USER = "user.alice", "alice"
POLL_S = 0.5
STALL_S = 60.0  # Rucio's rule is OK and no file came for this long: the rest is lost


@dataclass
class E2eResult:
    """Seconds, all from the rules' creation in Rucio (None: not reached)."""

    files: int
    setup_s: float = 0.0
    accepted_s: float | None = None  # request published -> request-accepted
    rules: int = 0
    rule_ok_s: float | None = None  # Rucio: created_at -> every rule OK (polled)
    rule_ok_rucio_s: float | None = None  # Rucio: created_at -> updated_at of the last
    first_done_s: float | None = None  # hermes' first transfer-done at the broker
    last_done_s: float | None = None
    per_file: Quantiles | None = None  # transfer-done at the broker -> file-ready (ms)
    first_ready_s: float | None = None
    last_ready_s: float | None = None
    completed_s: float | None = None
    ready: int = 0
    failed: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)


def _epoch(value: dt.datetime | str) -> float:
    """Seconds since the epoch of Rucio's UTC time (a naive datetime, or its text)."""
    if isinstance(value, str):
        value = dt.datetime.strptime(value, "%a, %d %b %Y %H:%M:%S UTC")  # noqa: DTZ007
    return calendar.timegm(value.timetuple()) + value.microsecond / 1e6


def _spawn_services(work: Path, vhost: Vhost, stack: RucioStack) -> list[_proc.Child]:
    config = DlaasConfig(
        workdir=work,
        amqp_url=vhost.url(),
        rucio_host=stack.rucio_host,
        mount_path=rse_dir(stack, NOTEBOOK),
        path_begins_at=2,
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
    env = {
        **environ,
        **config.env(),
        "DLAAS_NOTIFIER__DB_URL": f"sqlite+aiosqlite:///{work / 'notifier.db'}",
    }
    children = []
    for name in SERVICES:
        binary = Path(sys.executable).parent / f"dlaas-{name}"
        log = work / "logs" / f"{name}.log"
        children.append(_proc.spawn(name, [str(binary)], log_path=log, env=env))
    return children


async def _declare(
    vhost: Vhost,
) -> tuple[aio_pika.abc.AbstractConnection, Any, Any, Any]:
    """Topology, alice's inbox, request-accepted/failed, and a copy of hermes' messages."""
    settings = BusSettings.model_validate({"url": vhost.url()})
    connection = await aio_pika.connect(vhost.url())
    channel = await connection.channel()
    await topology.declare_all(channel, settings)
    inbox = await topology.declare_inbox(channel, USER, settings)
    answers = await channel.declare_queue(exclusive=True)
    for event in (RequestAccepted, RequestFailed):
        await answers.bind(topology.EVENTS, event.routing_key())
    hermes = await channel.declare_queue(exclusive=True)
    await hermes.bind(topology.HERMES, "#")
    return connection, inbox, answers, hermes


@dataclass
class _Listener:
    """What alice's inbox and the request's answer told, with arrival times."""

    request_id: str
    accepted: asyncio.Future[dict[str, Any]]
    ready: dict[str, float] = field(default_factory=dict)  # DID -> first file-ready
    done: dict[str, float] = field(default_factory=dict)  # DID -> hermes' transfer-done
    ended: dict[str, float] = field(default_factory=dict)  # completed / failed -> when
    counts: dict[str, int] = field(default_factory=dict)
    over: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_note(self, message: AbstractIncomingMessage) -> None:
        now = time.time()
        for _, body in batch.unbatch(message):  # notes told together share a message
            self._on_note(json.loads(body), now)
        await message.ack()

    def _on_note(self, note: dict[str, Any], now: float) -> None:
        if note.get("request_id") == self.request_id:
            kind = str(note.get("kind"))
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if kind == "file-ready":
                self.ready.setdefault(str(note["did"]), now)
            if kind in {"completed", "failed"}:
                self.ended.setdefault(kind, now)
                self.over.set()

    async def on_hermes(self, message: AbstractIncomingMessage) -> None:
        """When hermes' ``transfer-done`` of each file reached the broker."""
        now, body = time.time(), json.loads(message.body)
        if body.get("event_type") == "transfer-done":
            payload = body.get("payload", {})
            self.done.setdefault(f"{payload.get('scope')}:{payload.get('name')}", now)
        await message.ack()

    async def on_answer(self, message: AbstractIncomingMessage) -> None:
        for _, raw in batch.unbatch(message):
            body = json.loads(raw)
            if body.get("request_id") == self.request_id and not self.accepted.done():
                self.accepted.set_result(body)
        await message.ack()

    async def until_ended(self, timeout: float) -> None:
        """Until completed/failed, or nothing new came for STALL_S (the rest is lost)."""
        deadline = time.monotonic() + timeout
        last, count = time.monotonic(), -1
        while not self.over.is_set() and time.monotonic() < deadline:
            if len(self.ready) != count:
                last, count = time.monotonic(), len(self.ready)
            elif time.monotonic() - last > STALL_S:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.over.wait(), 1.0)


async def measure(
    vhost: Vhost, stack: RucioStack, work: Path, *, did: str, n: int, timeout: float
) -> E2eResult:
    """Start the services, send the request, follow the rules and alice's inbox."""
    result = E2eResult(files=n)
    connection, inbox, answers, hermes = await _declare(vhost)
    request = RuleRequested(request_id=uuid.uuid4(), user=USER, dids=[did], rse=NOTEBOOK)
    loop = asyncio.get_running_loop()
    heard = _Listener(str(request.request_id), loop.create_future())
    await inbox.consume(heard.on_note)
    await answers.consume(heard.on_answer)
    await hermes.consume(heard.on_hermes)
    children = _spawn_services(work / "dlaas", vhost, stack)
    try:
        for child in children:
            wait_logged(child, "service_started", timeout=60)
        bus = await Bus(BusSettings.model_validate({"url": vhost.url(USER)}),
                        name="bench").connect()  # fmt: skip
        published = time.time()
        await bus.publish(request, correlation_id=heard.request_id, user_id=USER)
        await bus.close()
        answer = await asyncio.wait_for(heard.accepted, timeout)
        result.accepted_s = time.time() - published
        if "reason" in answer:
            result.failed = str(answer["reason"])
            return result
        rules = [str(r) for r in answer.get("rule_ids", [])]
        result.rules = len(rules)
        created, ok_at, ok_rucio = await _follow_rules(stack, rules, timeout)
        await heard.until_ended(timeout)  # after the rule is OK
        await asyncio.sleep(2)  # anything the request still tells
    finally:
        await connection.close()
        _proc.stop_all(children, grace=15)
    result.kinds, result.ready = heard.counts, len(heard.ready)
    result.rule_ok_s = None if ok_at is None else ok_at - created
    result.rule_ok_rucio_s = None if ok_rucio is None else ok_rucio - created
    if heard.done:
        result.first_done_s = min(heard.done.values()) - created
        result.last_done_s = max(heard.done.values()) - created
        pairs = [(heard.done[d], t) for d, t in heard.ready.items() if d in heard.done]
        result.per_file = Quantiles.of([t - d for d, t in pairs])
    if heard.ready:
        result.first_ready_s = min(heard.ready.values()) - created
        result.last_ready_s = max(heard.ready.values()) - created
    if "completed" in heard.ended:
        result.completed_s = heard.ended["completed"] - created
    return result


async def _follow_rules(
    stack: RucioStack, rules: list[str], timeout: float
) -> tuple[float, float | None, float | None]:
    """Earliest created_at; when polling first saw every rule OK; the last updated_at."""
    client = stack.client()
    deadline = time.monotonic() + timeout
    created: float | None = None
    while time.monotonic() < deadline:
        infos = [
            await asyncio.to_thread(client.get_replication_rule, rule) for rule in rules
        ]
        now = time.time()
        if created is None:
            created = min(_epoch(info["created_at"]) for info in infos)
        if all(str(info["state"]) == "OK" for info in infos):
            return created, now, max(_epoch(info["updated_at"]) for info in infos)
        await asyncio.sleep(POLL_S)
    return created if created is not None else time.time(), None, None


async def run(n_files: int, timeout: float = 1800) -> E2eResult:
    """Stand a Rucio up with every daemon, make the dataset, measure one request."""
    with workspace() as work, throwaway_vhost() as vhost:
        db_name = f"dlaas_bench_{uuid.uuid4().hex[:8]}"
        settings = RucioStackSettings(workdir=work / "rucio", amqp_vhost=vhost.name,
                                      db_name=db_name, gunicorn_workers=2)  # fmt: skip
        stack = RucioStack(settings)
        try:
            started = time.monotonic()
            await asyncio.to_thread(stack.start)
            await asyncio.to_thread(build_lake, stack)
            name = f"e2e-{uuid.uuid4().hex[:8]}"
            await asyncio.to_thread(make_dataset, stack, SCOPE, name, n_files)
            setup_s = time.monotonic() - started
            did = f"{SCOPE}:{name}"
            result = await measure(
                vhost, stack, work, did=did, n=n_files, timeout=timeout
            )
            result.setup_s = setup_s
            return result
        finally:
            await asyncio.to_thread(stack.stop)
            _drop(db_name)


def print_table(r: E2eResult) -> None:
    """Rucio's own time beside the time to the user's last notification."""

    def secs(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.1f}"

    added = None
    if r.rule_ok_s is not None and r.last_ready_s is not None:
        added = r.last_ready_s - r.rule_ok_s
    own = None
    if r.last_done_s is not None and r.last_ready_s is not None:
        own = r.last_ready_s - r.last_done_s
    print(f"\n## Real Rucio end to end: one dataset of {r.files} files, "
          f"{r.rules} rule(s), conveyor with the mock transfertool, hermes over STOMP")  # fmt: skip
    print("| from the rule's creation (Rucio's created_at) to | s |")
    print("|---|---|")
    rows = [
        ("request-accepted after the request was published", r.accepted_s),
        ("Rucio: every rule OK (polled every 0.5 s)", r.rule_ok_s),
        ("Rucio: every rule OK (its updated_at)", r.rule_ok_rucio_s),
        ("hermes: first transfer-done at the broker", r.first_done_s),
        ("hermes: last transfer-done at the broker", r.last_done_s),
        ("dlaas: first file-ready at the user", r.first_ready_s),
        ("dlaas: last file-ready at the user", r.last_ready_s),
        ("dlaas: completed at the user", r.completed_s),
        ("**delay after Rucio** (last file-ready - rule OK polled)", added),
        ("**delay dlaas adds** (last file-ready - last transfer-done)", own),
    ]
    for label, value in rows:
        print(f"| {label} | {secs(value)} |")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.kinds.items()))
    print(f"\nfiles ready at the user: {r.ready} of {r.files}; notifications: {kinds}; "
          f"Rucio set-up (start, lake, dataset): {r.setup_s:.0f} s")  # fmt: skip
    if r.per_file is not None:
        q = r.per_file
        print(f"per file, hermes' transfer-done at the broker -> file-ready at the user: "
              f"p50 {q.p50:.0f} ms, p99 {q.p99:.0f} ms, max {q.max:.0f} ms")  # fmt: skip
    if r.failed:
        print(f"FAILED: {r.failed}")


def main(argv: list[str] | None = None) -> int:
    """Parse the size, run once, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.rucio_e2e")
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"load before: {load_average()}", flush=True)
    result = asyncio.run(run(args.files))
    print_table(result)
    print(f"load after: {load_average()}")
    return 1 if result.failed or result.ready < result.files else 0


if __name__ == "__main__":
    sys.exit(main())
