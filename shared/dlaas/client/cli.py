"""``dlaas``: stage DIDs from a terminal and watch them become ready."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Never, TextIO

import aiormq.exceptions
from aio_pika.exceptions import AMQPError, DeliveryError
from tqdm.auto import tqdm

from dlaas.client.api import ClientSettings, StageResult, astage
from dlaas.contracts import Notification
from dlaas.logging import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class _Printer:
    """Prints one line per file (or one JSON object with ``--json``) and a progress bar."""

    def __init__(self, *, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.bar: tqdm[Never] | None = None
        self.show_bar = not as_json and sys.stderr.isatty()

    def __call__(self, note: Notification, result: StageResult) -> None:
        if self.as_json:
            print(note.model_dump_json(), file=self.out, flush=True)
            return
        if note.kind == "accepted" and self.show_bar:
            self.bar = tqdm(
                total=note.files_total, unit="file", desc="staging", file=sys.stderr
            )
        line = self._line(note)
        if line:
            (self.bar.write if self.bar else print)(line, file=self.out)
        if self.bar is not None:
            self.bar.n = len(result.ready) + len(result.failed)
            self.bar.refresh()

    @staticmethod
    def _line(note: Notification) -> str | None:
        if note.kind == "file-ready":
            return f"ready   {note.did}  {note.path}  {note.cache_url}"
        if note.kind == "file-failed":
            return f"FAILED  {note.did}  {note.reason}"
        if note.kind in ("accepted", "completed", "failed"):
            return note.text
        return None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlaas", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    stage = commands.add_parser("stage", help="make DIDs available at the notebook's RSE")
    stage.add_argument("dids", nargs="+", metavar="SCOPE:NAME")
    stage.add_argument("--rse", help="destination RSE (default: $DLAAS_RSE)")
    stage.add_argument("--lifetime-days", type=float, help="rule lifetime")
    stage.add_argument(
        "--wait", action="store_true", help="wait until every file is ready"
    )
    stage.add_argument(
        "--timeout", type=float, help="give up waiting after this many seconds"
    )
    stage.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _exit_code(result: StageResult) -> int:
    return EXIT_OK if result.ok or not result.completed else EXIT_FAILED


def run_stage(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``dlaas stage``; the exit code."""
    settings = ClientSettings()
    rse = args.rse or settings.rse
    if not rse:
        print("dlaas: no destination: pass --rse or set DLAAS_RSE", file=sys.stderr)
        return EXIT_USAGE
    printer = _Printer(as_json=args.json, out=out)
    started = time.monotonic()
    try:
        result = asyncio.run(
            astage(
                args.dids,
                rse=rse,
                lifetime_days=args.lifetime_days,
                wait=args.wait,
                timeout=args.timeout,
                settings=settings.bus,
                on_update=printer,
            )
        )
    except TimeoutError:
        print(
            f"dlaas: still waiting after {args.timeout} s; the request goes on",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    except DeliveryError:
        print(
            "dlaas: no stager takes requests on this broker: is dlaas running?",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except (OSError, AMQPError, aiormq.exceptions.AMQPError) as exc:
        print(
            f"dlaas: cannot reach the broker at {settings.bus.display_url}: {exc}",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    finally:
        printer.close()
    if not args.wait:
        print(
            json.dumps({"request_id": str(result.request_id)})
            if args.json
            else f"request {result.request_id} sent",
            file=out,
        )
        return EXIT_OK
    if not args.json:
        print(
            f"done: {len(result.ready)} ready, {len(result.failed)} failed "
            f"in {time.monotonic() - started:.1f} s",
            file=out,
        )
    return _exit_code(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dlaas``."""
    args = _parser().parse_args(argv)
    configure_logging(json=False, level="WARNING")  # stdout is for results only
    code = run_stage(args)
    sys.exit(code) if argv is None else None
    return code
