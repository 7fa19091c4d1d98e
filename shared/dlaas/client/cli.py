"""``dlaas``: stage DIDs from a terminal, watch them become ready, ask where a request stands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TextIO

import aiormq.exceptions
from aio_pika.exceptions import AMQPError, DeliveryError

from dlaas.client import api, sources
from dlaas.client.api import ClientSettings, StageResult
from dlaas.client.printing import Printer
from dlaas.contracts import Notification
from dlaas.logging import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlaas", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    stage = commands.add_parser("stage", help="make DIDs available at the notebook's RSE")
    stage.add_argument("dids", nargs="*", metavar="SCOPE:NAME")
    stage.add_argument(
        "--from",
        dest="files",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a DID list, an ESAP basket (JSON) or a notebook",
    )
    stage.add_argument(
        "--esap", metavar="URL", help="your basket at this ESAP API gateway"
    )
    stage.add_argument(
        "--token-env",
        default="ACCESS_TOKEN",
        metavar="VAR",
        help="environment variable holding your ESAP bearer token",
    )
    stage.add_argument("--rse", help="destination RSE (default: $DLAAS_RSE)")
    stage.add_argument("--lifetime-days", type=float, help="rule lifetime")
    stage.add_argument(
        "--node", help="node whose fuse agent shows the files (default: $DLAAS_NODE)"
    )
    stage.add_argument("--dry-run", action="store_true", help="show what would be staged")
    stage.add_argument(
        "--wait", action="store_true", help="wait until every file is ready"
    )
    for name, text in (("wait", "wait for a request"), ("status", "where a request stands"),
                       ("cancel", "cancel a request")):  # fmt: skip
        command = commands.add_parser(name, help=text)
        command.add_argument("request_id", metavar="REQUEST")
    publish = commands.add_parser(
        "publish", help="keep a file you produced: into the lake"
    )
    publish.add_argument("path", help="the file, as this notebook sees it")
    publish.add_argument("--did", required=True, metavar="SCOPE:NAME", help="its name")
    publish.add_argument("--rse", required=True, help="the scratch RSE it is on")
    publish.add_argument("--pfn", required=True, help="its PFN on that RSE")
    publish.add_argument("--to", required=True, dest="to_rse", help="long-term RSE")
    publish.add_argument("--wait", action="store_true", help="wait until it is safe")
    for command in (stage, commands.choices["wait"], publish):
        command.add_argument("--timeout", type=float, help="stop waiting after SECONDS")
    for command in (stage, publish):
        command.add_argument(
            "--instance",
            help="Rucio instance (default: $DLAAS_INSTANCE, else the default)",
        )
    commands.add_parser("inbox", help="notifications sent while you were away")
    config = commands.add_parser(
        "config", help="the effective configuration, secrets masked"
    )
    config.add_argument(
        "service",
        nargs="?",
        default="client",
        choices=["client", "stager", "cache-router", "fuse-agent", "notifier"],
    )
    for command in commands.choices.values():
        command.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    return parser


def _summary(result: StageResult, started: float, out: TextIO) -> int:
    """The last line, after the progress bar is gone; the exit code."""
    print(f"done: {len(result.ready)} ready, {len(result.failed)} failed"
          f"{', ' + result.reason if result.reason else ''} in "
          f"{time.monotonic() - started:.1f} s", file=out)  # fmt: skip
    return EXIT_OK if result.ok else EXIT_FAILED


async def _stage(
    args: argparse.Namespace, settings: ClientSettings, printer: Printer
) -> int:
    rse = args.rse or settings.rse
    if not rse:
        print("dlaas: no destination: pass --rse or set DLAAS_RSE", file=sys.stderr)
        return EXIT_USAGE
    selection = _selection(args)
    if not selection.dids:
        print(
            "dlaas: nothing to stage: give DIDs, --from FILE or --esap URL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    started = time.monotonic()
    if args.dry_run:
        return await _dry_run(
            selection.dids, rse, settings, printer.out, as_json=args.json,
            instance=args.instance,
        )  # fmt: skip
    result = await api.astage(selection.dids, rse=rse, lifetime_days=args.lifetime_days,
                              wait=args.wait, timeout=args.timeout, settings=settings.bus,
                              on_update=printer, node=args.node or settings.node,
                              instance=args.instance or settings.instance)  # fmt: skip
    printer.close()
    if not args.wait:
        text = (
            json.dumps({"request_id": str(result.request_id)})
            if args.json
            else (
                f"request {result.request_id} sent; follow it with: dlaas wait {result.request_id}"
            )
        )
        print(text, file=printer.out)
        return EXIT_OK
    return (
        EXIT_OK
        if args.json and result.ok
        else (EXIT_FAILED if args.json else _summary(result, started, printer.out))
    )


async def _dry_run(
    dids: list[str],
    rse: str,
    settings: ClientSettings,
    out: TextIO,
    *,
    as_json: bool,
    instance: str | None = None,
) -> int:
    result = await api.astage(
        dids, rse=rse, dry_run=True, timeout=120, settings=settings.bus, instance=instance
    )
    for entry in result.plan:
        print(entry.model_dump_json() if as_json else (
            f"{entry.did}  {entry.kind}  {entry.reason}" if entry.reason else
            f"{entry.did}  {entry.kind}  {entry.files} files  {entry.bytes} bytes  "
            f"{entry.available} already at {rse}"), file=out)  # fmt: skip
    if not as_json:
        print("dry run: nothing was created", file=out)
    return EXIT_FAILED if any(e.reason for e in result.plan) else EXIT_OK


def _selection(args: argparse.Namespace) -> sources.Selection:
    baskets = []
    if args.esap:
        token = os.environ.get(args.token_env)
        if not token:
            raise sources.SourceError(f"--esap needs your token in ${args.token_env}")
        baskets.append(sources.fetch_basket(args.esap, token))
    selection = sources.collect(args.dids, args.files, baskets)
    for skipped in selection.skipped:
        print(f"dlaas: skipped {skipped}", file=sys.stderr)
    return selection


async def _wait(
    args: argparse.Namespace, settings: ClientSettings, printer: Printer
) -> int:
    started = time.monotonic()
    result = await api.await_request(args.request_id, timeout=args.timeout,
                                     settings=settings.bus, on_update=printer)  # fmt: skip
    for ready in result.ready.values():  # what was ready before we started to wait
        printer(
            Notification(
                request_id=result.request_id,
                user=settings.bus.login,
                kind="file-ready",
                text="",
                did=ready.did,
                path=ready.path,
                cache_url=ready.cache_url,
                source_event_id="status",
            ),
            result,
        )
    printer.close()
    return (
        _summary(result, started, printer.out)
        if not args.json
        else (EXIT_OK if result.ok else EXIT_FAILED)
    )


async def _publish(
    args: argparse.Namespace, settings: ClientSettings, out: TextIO
) -> int:
    started = time.monotonic()
    result = await api.apublish(args.path, args.did, rse=args.rse, pfn=args.pfn,
                                to_rse=args.to_rse, wait=args.wait, timeout=args.timeout,
                                settings=settings.bus,
                                instance=args.instance or settings.instance)  # fmt: skip
    if not args.wait:
        print(f"request {result.request_id} sent", file=out)
        return EXIT_OK
    for ready in result.ready.values():
        print(f"safe    {ready.did}  {ready.pfn}", file=out)
    return _summary(result, started, out)


async def _status(args: argparse.Namespace, settings: ClientSettings, out: TextIO) -> int:
    result = await api.astatus(args.request_id, settings=settings.bus)
    waiting = (result.files_total or 0) - len(result.ready) - len(result.failed)
    state = "completed" if result.completed else "in progress"
    if args.json:
        print(json.dumps({"request_id": str(result.request_id), "state": state,
                          "reason": result.reason, "files_total": result.files_total,
                          "ready": {d: f.path for d, f in result.ready.items()},
                          "failed": result.failed, "waiting": waiting}), file=out)  # fmt: skip
    else:
        print(f"{result.request_id}: {result.reason or state}, {len(result.ready)} ready, "
              f"{len(result.failed)} failed, {waiting} waiting", file=out)  # fmt: skip
        for did, reason in result.failed.items():
            print(f"FAILED  {did}  {reason}", file=out)
    return EXIT_FAILED if result.reason else EXIT_OK


async def _cancel(args: argparse.Namespace, settings: ClientSettings, out: TextIO) -> int:
    result = await api.acancel(args.request_id, settings=settings.bus)
    print(
        json.dumps({"cancelled": result.reason}) if args.json else result.reason, file=out
    )
    return EXIT_OK


async def _inbox(args: argparse.Namespace, settings: ClientSettings, out: TextIO) -> int:
    notes = await api.ainbox(settings=settings.bus)
    seen: set[tuple[str, str, str | None]] = set()  # a fact told twice is shown once
    for note in notes:
        fact = (str(note.request_id), note.kind, note.did)
        if fact in seen and note.kind != "progress":
            continue
        seen.add(fact)
        print(
            note.model_dump_json()
            if args.json
            else f"{note.occurred_at:%Y-%m-%d %H:%M}  {note.request_id}  {note.text}",
            file=out,
        )
    if not notes and not args.json:
        print("inbox empty", file=out)
    return EXIT_OK


def _config(args: argparse.Namespace, out: TextIO) -> int:
    from dlaas.config_dump import effective_config, settings_class  # noqa: PLC0415

    print(
        json.dumps(effective_config(settings_class(args.service)()), indent=2), file=out
    )
    return EXIT_OK


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run one command; its exit code (errors say what to do)."""
    if args.command == "config":
        return _config(args, out)
    settings = ClientSettings()
    printer = Printer(as_json=args.json, out=out)
    commands: dict[str, Callable[[], Coroutine[None, None, int]]] = {
        "stage": lambda: _stage(args, settings, printer),
        "wait": lambda: _wait(args, settings, printer),
        "status": lambda: _status(args, settings, out),
        "publish": lambda: _publish(args, settings, out),
        "cancel": lambda: _cancel(args, settings, out),
        "inbox": lambda: _inbox(args, settings, out),
    }
    try:
        return asyncio.run(commands[args.command]())
    except sources.SourceError as exc:
        print(f"dlaas: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TimeoutError:
        print(
            "dlaas: still waiting; the request goes on (dlaas wait REQUEST)",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    except DeliveryError:
        print("dlaas: no stager takes requests on this broker: is dlaas running?",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    except (OSError, AMQPError, aiormq.exceptions.AMQPError) as exc:
        print(f"dlaas: cannot reach the broker at {settings.bus.display_url} ({exc}); "
              "check DLAAS_BUS__URL and your credentials", file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    finally:
        printer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dlaas``."""
    args = _parser().parse_args(argv)
    configure_logging(json=False, level="WARNING")  # stdout is for results only
    code = run(args)
    if argv is None:
        sys.exit(code)
    return code
