"""structlog set-up: JSON lines in pods, console on a terminal, context from contextvars."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("password", "token", "secret", "authorization", "proxy", "cookie")
_SECRET = re.compile("|".join(_SECRET_KEYS), re.IGNORECASE)  # one scan of a key, not six


def _redact(
    _: object, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Never let a credential reach a log line, whatever a caller bound."""
    for key in list(event_dict):
        if _SECRET.search(key):
            event_dict[key] = "***"
    return event_dict


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog once per process (never at import time)."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=as_json,
    )


class bound:  # noqa: N801  (used as structlog's bound_contextvars is)
    """Bind context variables for the block, then restore what was there.

    What ``structlog.contextvars.bound_contextvars`` does, without copying the whole
    context on entry: it runs several times per message on the hot path.
    """

    __slots__ = ("_tokens", "_values")

    def __init__(self, **values: object) -> None:
        self._values = values

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(**self._values)

    def __exit__(self, *_: object) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)
