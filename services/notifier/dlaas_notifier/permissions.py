"""Broker-enforced isolation: the RabbitMQ rights of one end user, set through the API.

A user (say alice) may:
- configure, bind and read private reply queues (``amq.gen-*`` named by the server,
  ``amq_<32 hex>`` named by aio-pika's robust channel; exclusive, so no one else's) and
  configure the three exchanges (the client declares them when it connects);
- read ``dlaas.inbox.alice`` and nothing of anyone else's;
- bind to ``dlaas.notify`` only with routing keys ``user.alice.*`` (topic permission, read);
- publish only to ``dlaas.events`` and only ``client.*`` routing keys (topic permission,
  write); RabbitMQ checks the ``user_id`` property of what she publishes against her login.
See deploy/rabbitmq/user-permissions.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from dlaas.bus import topology
from dlaas.contracts import RuleRequested
from dlaas.contracts.base import RequestEvent

NOTHING = "^$"
# a private reply queue: named by the server (amq.gen-...), or by aio-pika's robust channel,
# which names "server-named" queues itself (amq_<uuid4 hex>) to redeclare them on reconnect
PRIVATE = r"amq\.gen-.*|amq_[0-9a-f]{32}"
_USER = re.compile(RequestEvent.model_fields["user"].metadata[0].pattern)


@dataclass(frozen=True)
class TopicGrant:
    """Routing keys a user may publish (``write``) and bind (``read``) on one exchange."""

    exchange: str
    write: str
    read: str


@dataclass(frozen=True)
class UserGrant:
    """A user's permissions (regular expressions, as RabbitMQ matches them) in a vhost."""

    user: str
    configure: str
    write: str
    read: str
    topics: tuple[TopicGrant, ...]


def _esc(text: str) -> str:
    return re.escape(text)


def _any_of(patterns: list[str]) -> str:
    return "^(" + "|".join(patterns) + ")$"


def user_grant(user: str, *, declares_exchanges: bool = False) -> UserGrant:
    """The rights of end user ``user``.

    ``declares_exchanges``: the client declares the exchanges when it connects, which needs
    ``configure`` on them (and so would let a user delete them); a client that only declares
    them passively can do without.
    """
    if not _USER.match(user):
        raise ValueError(f"not a dlaas user name: {user!r}")
    exchanges = [_esc(x) for x in topology.EXCHANGES] if declares_exchanges else []
    own_key = "^" + _esc(topology.notify_routing_key(user, ""))  # user.<user>.
    client = "^" + _esc(RuleRequested.producer + ".")
    return UserGrant(
        user=user,
        configure=_any_of([PRIVATE, *exchanges]),
        write=_any_of([PRIVATE, _esc(topology.EVENTS)]),
        read=_any_of([PRIVATE, _esc(topology.NOTIFY), _esc(topology.inbox(user).name)]),
        topics=(
            TopicGrant(topology.EVENTS, write=client, read=NOTHING),
            TopicGrant(topology.NOTIFY, write=NOTHING, read=own_key),
        ),
    )


@dataclass(frozen=True)
class ManagementApi:
    """RabbitMQ's management HTTP API with an administrator's login."""

    url: str  # e.g. http://127.0.0.1:15672/api
    user: str
    password: str

    async def apply(self, vhost: str, grant: UserGrant) -> None:
        """Replace the user's permissions and topic permissions in ``vhost`` by ``grant``."""
        where = f"{quote(vhost, safe='')}/{quote(grant.user, safe='')}"
        async with httpx.AsyncClient(
            base_url=self.url.rstrip("/"), auth=(self.user, self.password), timeout=120
        ) as api:
            rights = {"configure": grant.configure, "write": grant.write}
            response = await api.put(
                f"/permissions/{where}", json=rights | {"read": grant.read}
            )
            response.raise_for_status()
            response = await api.delete(f"/topic-permissions/{where}")
            if response.status_code != httpx.codes.NOT_FOUND:
                response.raise_for_status()
            for topic in grant.topics:
                body = {
                    "exchange": topic.exchange,
                    "write": topic.write,
                    "read": topic.read,
                }
                response = await api.put(f"/topic-permissions/{where}", json=body)
                response.raise_for_status()
