"""The stager's tables and the records its store hands out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from dlaas_stager.ports import FileInfo

STAGE, PUBLISH = "stage", "publish"  # request kinds: bring data to a notebook, or keep it
metadata = sa.MetaData()
requests_t = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("account", sa.String(64), nullable=False),
    sa.Column("rse", sa.String(255), nullable=False),
    sa.Column("correlation_id", sa.String(128)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, server_default=STAGE),
    # the notebook's node: its fuse agent shows the files
    sa.Column("node", sa.String(253)),
    # the Rucio instance (None in stores made before instances: the default one)
    sa.Column("instance", sa.String(64)),
)
files_t = sa.Table(
    "request_files",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("did", sa.String(300), primary_key=True),
    sa.Column("rse", sa.String(255), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("adler32", sa.String(8)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("parent", sa.String(300)),  # the requested dataset/container it came from
    sa.Column("path", sa.Text),  # where the user sees it, once visible
    sa.Column("pfn", sa.Text),
    sa.Column("cache_url", sa.Text),
    sa.Index("ix_files_did_rse_state", "did", "rse", "state"),
    # completion: "does this request still have open files?" without reading them all
    sa.Index("ix_files_request_state", "request_id", "state"),
)
rules_t = sa.Table(
    "request_rules",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("rule_id", sa.String(36), primary_key=True, index=True),
)

PENDING, STAGED, VISIBLE, FAILED = "pending", "staged", "visible", "failed"
CANCELLED = "cancelled"
FINAL = (VISIBLE, FAILED, CANCELLED)
OPEN = (PENDING, STAGED)  # a request with files in these states is not done


@dataclass(frozen=True)
class NewRequest:
    """A request as the stager records it after creating its rules."""

    request_id: str
    user: str
    account: str
    rse: str
    correlation_id: str | None
    files: Sequence[FileInfo]
    rule_ids: Sequence[str]
    refused: Mapping[str, str]  # DID -> why Rucio refused it
    kind: str = STAGE
    node: str | None = None
    instance: str | None = None


@dataclass(frozen=True)
class WaitingFile:
    """A file some request waits for."""

    request_id: str
    user: str
    correlation_id: str | None
    did: str
    rse: str
    kind: str = STAGE
    parent: str | None = None
    node: str | None = None
    instance: str | None = None
    state: str = PENDING  # STAGED: claimed, maybe never announced (a crash between)


@dataclass(frozen=True)
class Summary:
    """Counts of a request's files, for completion."""

    request_id: str
    user: str
    correlation_id: str | None
    state: str
    created_at: float
    by_state: dict[str, int]
    bytes_ready: int
    rse: str
    bytes_total: int

    @property
    def done(self) -> bool:
        """Every file is visible or failed."""
        return not (self.by_state.get(PENDING, 0) or self.by_state.get(STAGED, 0))
