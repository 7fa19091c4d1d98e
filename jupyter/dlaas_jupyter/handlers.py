"""``GET /dlaas/notifications``: the long-poll the front end keeps open on the local server."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from dlaas_jupyter.relay import Relay

MAX_WAIT_S = (
    30.0  # below the usual 60 s idle timeouts of JupyterHub's proxy and ingresses
)


class NotificationsHandler(APIHandler):
    """Notifications after ``after`` (of server run ``epoch``), waiting up to ``wait`` s."""

    auth_resource = "dlaas"

    @property
    def relay(self) -> Relay:
        """The server's relay (set by the extension app)."""
        relay: Relay = self.settings["dlaas_relay"]
        return relay

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Answer at once when something is new, else when it arrives or ``wait`` passes."""
        epoch = self.get_query_argument("epoch", "")
        try:
            after = int(self.get_query_argument("after", "0"))
            wait = float(self.get_query_argument("wait", "0"))
        except ValueError as exc:
            raise web.HTTPError(400, "after must be an integer, wait a number") from exc
        wait = min(max(wait, 0.0), MAX_WAIT_S)
        batch = await self.relay.wait(epoch, after, wait)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(batch))
