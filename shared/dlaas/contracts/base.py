"""Base of every dlaas event and the DID value type."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Self
from uuid import UUID, uuid4

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

# Rucio's generic schema: scope up to 25 chars, name up to 250, no slashes in the scope.
_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,24}$")
_NAME = re.compile(r"^[A-Za-z0-9._/+\-:]{1,250}$")


def _check_did(value: str) -> str:
    scope, sep, name = value.partition(":")
    # fullmatch: "$" of match() also accepts a trailing newline ("scope:name\n")
    if not sep or not _SCOPE.fullmatch(scope) or not _NAME.fullmatch(name):
        raise ValueError(f"not a valid DID 'scope:name': {value[:80]!r}")
    # as a path below <views>/<user>/<scope>/ it must name a file there: no "/x", "..",
    # nor "." or empty parts ("./", "a//b", "a/") that name the folder or a directory
    if name.startswith("/") or {"", ".", ".."} & set(name.split("/")):
        raise ValueError(f"DID name would escape a directory: {value[:80]!r}")
    return value


DidStr = Annotated[str, AfterValidator(_check_did)]


class Did(BaseModel):
    """A Rucio data identifier."""

    model_config = ConfigDict(frozen=True)

    scope: str = Field(description="Rucio scope", pattern=_SCOPE.pattern)
    name: str = Field(
        description="Rucio name within the scope", min_length=1, max_length=250
    )

    @classmethod
    def parse(cls, did: str) -> Self:
        """Parse and check ``scope:name``."""
        scope, _, name = _check_did(did).partition(":")
        return cls(scope=scope, name=name)

    def __str__(self) -> str:
        return f"{self.scope}:{self.name}"


class Event(BaseModel):
    """A fact published on the dlaas bus. Subclasses set ``event_type`` (the AMQP type)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    producer: ClassVar[str]

    event_id: UUID = Field(
        default_factory=uuid4, description="Idempotency key of this fact"
    )
    occurred_at: AwareDatetime = Field(
        default_factory=lambda: datetime.now(UTC), description="When the fact happened"
    )

    @classmethod
    def routing_key(cls) -> str:
        """Topic routing key: ``<producer>.<event-type>`` (the type carries the version)."""
        return f"{cls.producer}.{cls.event_type}"


UserName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
# a Rucio instance as operators name it (hermes's routing key: one topic word)
InstanceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
# a Kubernetes node name (RFC 1123 subdomain) or a host name
NodeName = Annotated[
    str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", max_length=253)
]


class RequestEvent(Event):
    """An event about one user's stage request."""

    request_id: UUID = Field(description="The stage request this fact belongs to")
    user: UserName = Field(description="Broker login of the user who asked")
