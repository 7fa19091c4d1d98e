"""Record Rucio's hermes traffic and play it back shuffled and repeated (events out of order, twice).

Recording binds a temporary queue to the ``rucio.hermes`` exchange and writes one JSON line per
message (routing key, headers, content type, body); playing back publishes them to the same
exchange with their routing keys, every record ``--times`` times, the whole lot shuffled::

    python -m dlaas_devstack.replay record --out hermes.jsonl --seconds 60
    python -m dlaas_devstack.replay replay --in hermes.jsonl --shuffle --times 2 --seed 7

``--url`` (default ``$DLAAS_BUS__URL``) names the broker and vhost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Self, cast

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection, HeadersType

log = structlog.get_logger(__name__)

HERMES = (
    "rucio.hermes"  # the exchange hermes publishes to (STOMP /exchange/rucio.hermes/...)
)
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]


def _plain(value: object) -> Json:
    """An AMQP header value as JSON (bytes as text, timestamps as ISO strings)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime | Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_plain(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class Recorded:
    """One message as it came from the exchange."""

    routing_key: str
    body: bytes
    headers: dict[str, Json]
    content_type: str | None = None

    def to_line(self) -> str:
        """One JSON line: the body as text when it is UTF-8 (hermes's is JSON), else base64."""
        row: dict[str, Json] = {
            "routing_key": self.routing_key,
            "headers": dict(self.headers),
            "content_type": self.content_type,
        }
        try:
            row["body"] = self.body.decode()
        except UnicodeDecodeError:
            row["body_b64"] = base64.b64encode(self.body).decode()
        return json.dumps(row, sort_keys=True)

    @classmethod
    def from_line(cls, line: str) -> Self:
        """Read one line written by :meth:`to_line`."""
        row = json.loads(line)
        body = (
            base64.b64decode(row["body_b64"])
            if "body_b64" in row
            else row["body"].encode()
        )
        return cls(
            row["routing_key"], body, row.get("headers") or {}, row.get("content_type")
        )

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> Self:
        """What to keep of a delivered message."""
        headers = {str(k): _plain(v) for k, v in (message.headers or {}).items()}
        return cls(message.routing_key or "", message.body, headers, message.content_type)


def load(path: Path) -> list[Recorded]:
    """The records of a JSON-lines file."""
    with path.open(encoding="utf-8") as lines:
        return [Recorded.from_line(line) for line in lines if line.strip()]


def save(path: Path, records: Iterable[Recorded]) -> int:
    """Write records as JSON lines; return how many."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(record.to_line() + "\n")
            count += 1
    return count


class Recorder:
    """A temporary queue on the exchange keeping every message, from ``__aenter__`` on."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str = HERMES,
        binding: str = "#",
        out: IO[str] | None = None,
    ) -> None:
        self.url, self.exchange, self.binding, self.out = url, exchange, binding, out
        self.records: list[Recorded] = []
        self._connection: AbstractRobustConnection | None = None
        self._last = time.monotonic()

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.exchange, self.binding)
        await queue.consume(self._keep, no_ack=True)
        log.info("recording", exchange=self.exchange, binding=self.binding)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()
        log.info("recorded", messages=len(self.records))

    async def _keep(self, message: AbstractIncomingMessage) -> None:
        record = Recorded.of(message)
        self.records.append(record)
        self._last = time.monotonic()
        if self.out is not None:
            self.out.write(record.to_line() + "\n")
            self.out.flush()

    async def wait(
        self,
        until: Callable[[Sequence[Recorded]], bool] | None = None,
        *,
        timeout: float,
        quiet_s: float = 0.0,
    ) -> None:
        """Wait until ``until(records)`` holds, then until nothing came for ``quiet_s``.

        Without ``until``, record for ``timeout`` seconds. Raises TimeoutError when ``until``
        still does not hold after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while until is None or not until(self.records):
            if time.monotonic() >= deadline:
                if until is None:
                    return
                raise TimeoutError(f"recording: condition not met in {timeout:.0f} s")
            await asyncio.sleep(0.1)
        while time.monotonic() - self._last < quiet_s:
            await asyncio.sleep(0.1)


def arrange(
    records: Sequence[Recorded],
    *,
    times: int = 1,
    shuffle: bool = False,
    seed: int | None = None,
) -> list[Recorded]:
    """Every record ``times`` times, in recorded order or all of the copies shuffled."""
    copies = [record for _ in range(times) for record in records]
    if shuffle:
        random.Random(seed).shuffle(copies)  # noqa: S311  # test traffic, not cryptography
    return copies


async def replay(
    url: str,
    records: Sequence[Recorded],
    *,
    exchange: str = HERMES,
    times: int = 1,
    shuffle: bool = False,
    seed: int | None = None,
) -> int:
    """Publish the arranged records (persistent, confirmed) to the exchange; return how many."""
    messages = arrange(records, times=times, shuffle=shuffle, seed=seed)
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(
            exchange
        )  # hermes's exchange exists: look it up
        for record in messages:
            await target.publish(
                aio_pika.Message(
                    record.body,
                    headers=cast("HeadersType", dict(record.headers)),
                    content_type=record.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=record.routing_key,
            )
    log.info("replayed", messages=len(messages), times=times, shuffle=shuffle, seed=seed)
    return len(messages)


async def _record(args: argparse.Namespace) -> int:
    with Path(args.out).open("w", encoding="utf-8") as out:
        async with Recorder(args.url, exchange=args.exchange, binding=args.binding,
                            out=out) as recorder:  # fmt: skip
            until = None
            if args.count is not None:
                count: int = args.count

                def until(records: Sequence[Recorded]) -> bool:
                    return len(records) >= count

            with contextlib.suppress(TimeoutError):  # --count not reached: keep what came
                await recorder.wait(until, timeout=args.seconds)
    print(f"recorded {len(recorder.records)} messages to {args.out}")
    return 0


async def _replay(args: argparse.Namespace) -> int:
    sent = await replay(args.url, load(Path(args.input)), exchange=args.exchange,
                        times=args.times, shuffle=args.shuffle, seed=args.seed)  # fmt: skip
    print(f"replayed {sent} messages to {args.exchange}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlaas_devstack.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--url", default=os.environ.get("DLAAS_BUS__URL", DEFAULT_URL))
    parser.add_argument("--exchange", default=HERMES)
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser(
        "record", help="record the exchange's messages to a file"
    )
    record.add_argument("--out", required=True, help="JSON-lines file to write")
    record.add_argument("--binding", default="#", help="routing key pattern (instance)")
    record.add_argument("--seconds", type=float, default=60.0, help="record this long")
    record.add_argument("--count", type=int, help="stop after this many messages")
    again = commands.add_parser("replay", help="publish recorded messages again")
    again.add_argument(
        "--in", dest="input", required=True, help="JSON-lines file to read"
    )
    again.add_argument("--times", type=int, default=1, help="send every message N times")
    again.add_argument("--shuffle", action="store_true", help="in random order")
    again.add_argument("--seed", type=int, help="seed of the shuffle (reproducible)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dlaas_devstack.replay``."""
    args = _parser().parse_args(argv)
    if args.command == "replay" and args.times < 1:
        _parser().error("--times must be at least 1")
    run = _record if args.command == "record" else _replay
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
