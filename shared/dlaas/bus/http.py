"""Health and metrics over HTTP, with no framework: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` answers while the process runs; ``/readyz`` only while the broker connection is
open and every readiness check passes (what Kubernetes routes and scales on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[bool]]
_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


class HealthServer:
    """A minimal HTTP/1.1 server for probes and Prometheus scrapes."""

    def __init__(self, host: str, port: int, checks: Mapping[str, Check]) -> None:
        self.host, self.port = host, port
        self.checks = dict(checks)
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http_listening", port=self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _failing(self) -> list[str]:
        return [name for name, check in self.checks.items() if not await _safe(check)]

    async def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            failing = await self._failing()
            body = ("not ready: " + ", ".join(failing) if failing else "ready") + "\n"
            return (503 if failing else 200), "text/plain", body.encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest()
        return 404, "text/plain", b"not found\n"

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode("latin-1").split("?")[0]
            status, kind, body = await self._answer(path)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, IndexError, ConnectionError):
            pass
        finally:
            writer.close()


async def _safe(check: Check) -> bool:
    try:
        return await asyncio.wait_for(check(), 5)
    except Exception:  # a check that fails to answer means not ready
        return False
