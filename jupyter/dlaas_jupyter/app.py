"""The server extension: a relay, its broker consumer and the long-poll endpoint."""

from __future__ import annotations

import asyncio
import contextlib

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from traitlets import Int

from dlaas.client.api import ClientSettings
from dlaas.settings import BusSettings
from dlaas_jupyter.consumer import consume
from dlaas_jupyter.handlers import NotificationsHandler
from dlaas_jupyter.relay import Relay


class DlaasJupyterApp(ExtensionApp):
    """Relays the user's dlaas notifications (``DLAAS_BUS__URL``'s login) to JupyterLab."""

    name = "dlaas_jupyter"
    load_other_extensions = True

    keep = Int(
        1000,
        config=True,
        help="Notifications kept for tabs that open later (newest first).",
    )

    def initialize_settings(self) -> None:
        """Read the bus settings once (as the ``dlaas`` client does) and make the relay."""
        self._bus: BusSettings = ClientSettings().bus
        self._relay = Relay(self._bus.login, keep=self.keep)
        self._task: asyncio.Task[None] | None = None
        self.settings["dlaas_relay"] = self._relay

    def initialize_handlers(self) -> None:
        """Serve the long-poll endpoint under the server's base URL."""
        self.handlers.append((r"/dlaas/notifications", NotificationsHandler))

    async def _start_jupyter_server_extension(self, serverapp: ServerApp) -> None:  # noqa: ARG002  (the hook's signature)
        """Start consuming once the server's event loop runs."""
        self._task = asyncio.create_task(consume(self._relay, self._bus, self.log))
        self._task.add_done_callback(self._on_consumer_done)
        self.log.info(
            "dlaas: relaying notifications of %s from %s",
            self._relay.user,
            self._bus.display_url,
        )

    async def stop_extension(self) -> None:
        """Stop consuming (the queue goes with the connection)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_consumer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._relay.set_status(connected=False, error=f"relay stopped: {exc!r}")
            self.log.error("dlaas: the notification relay stopped", exc_info=exc)
