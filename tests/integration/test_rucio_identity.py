"""The stager's own identity at a real Rucio: acting for users only where Rucio maps it.

With ``act_as_user`` the stager authenticates as the requesting user's Rucio account with its
own credentials (never a user's token): Rucio grants that only where the identity is mapped to
the account, so a user the operators did not map is refused clearly, whatever the stager's
own account may do. A token that goes bad between requests is replaced without anyone noticing.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlaas.client.api import astage
from dlaas.settings import BusSettings
from dlaas_devstack.broker import Vhost
from dlaas_devstack.lake import NOTEBOOK, make_dataset, rse_dir
from dlaas_devstack.rucio import RucioStack
from dlaas_stager.adapters.rucio import RucioCatalog
from dlaas_stager.settings import RucioSettings
from tests.services import running_services

pytestmark = [pytest.mark.rucio, pytest.mark.security, pytest.mark.timeout(300)]

IDENTITY = "ddmlab"  # the local stack's service login (userpass)


@pytest.fixture
async def acting_catalog(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> AsyncIterator[RucioCatalog]:
    """The stager acting as users' accounts; Rucio maps its identity to alice, not to bob."""
    client = rucio_stack.client()
    client.del_identity("bob", IDENTITY, "USERPASS")  # the lake maps it to every user
    try:
        async with _running(broker, rucio_stack, tmp_path) as catalog:
            yield catalog
    finally:
        client.add_identity(account="bob", identity=IDENTITY, authtype="USERPASS",
                            email="bob@example.org", password="secret")  # noqa: S106  # fmt: skip


@contextlib.asynccontextmanager
async def _running(
    broker: Vhost, rucio_stack: RucioStack, tmp_path: Path
) -> AsyncIterator[RucioCatalog]:
    catalog = RucioCatalog(RucioSettings.model_validate({
        "host": rucio_stack.rucio_host, "username": IDENTITY, "password": "secret",
        "account": "root", "act_as_user": True}))  # fmt: skip
    async with running_services(
        broker.url(), tmp_path, catalog, mount=rse_dir(rucio_stack, NOTEBOOK)
    ):
        yield catalog


def _bus(url: str) -> BusSettings:
    return BusSettings.model_validate({"url": url})


async def test_rules_are_made_as_the_user_only_where_rucio_maps_the_identity(
    broker: Vhost, rucio_stack: RucioStack, acting_catalog: RucioCatalog
) -> None:
    name = f"mine-{uuid.uuid4().hex[:8]}"
    make_dataset(rucio_stack, "user.alice", name, 2)
    ours = await astage([f"user.alice:{name}"], rse=NOTEBOOK, timeout=120,
                        settings=_bus(broker.url("alice")))  # fmt: skip
    assert ours.ok, ours
    rules = rucio_stack.client().list_did_rules("user.alice", name)
    assert [r["account"] for r in rules] == ["alice"]

    # bob's account exists and has quota, but the stager's identity is not his
    theirs = f"theirs-{uuid.uuid4().hex[:8]}"
    make_dataset(rucio_stack, "user.bob", theirs, 1)
    refused = await astage([f"user.bob:{theirs}"], rse=NOTEBOOK, timeout=60,
                           settings=_bus(broker.url("bob")))  # fmt: skip
    assert not refused.ok
    assert refused.reason is not None
    assert f"user.bob:{theirs}" in refused.reason
    assert f"does not map the stager's identity ({IDENTITY}) to account bob" in (
        refused.reason
    )
    assert list(rucio_stack.client().list_did_rules("user.bob", theirs)) == []


async def test_a_token_gone_bad_is_replaced_between_requests(
    broker: Vhost, rucio_stack: RucioStack, acting_catalog: RucioCatalog
) -> None:
    first = f"tok-{uuid.uuid4().hex[:8]}"
    make_dataset(rucio_stack, "user.alice", first, 1)
    done = await astage([f"user.alice:{first}"], rse=NOTEBOOK, timeout=120,
                        settings=_bus(broker.url("alice")))  # fmt: skip
    assert done.ok, done
    tokens = list(Path(acting_catalog.folder or "/nonexistent").glob("token-*/token"))
    assert tokens, "the catalog keeps its tokens in its own folder"
    for token in tokens:  # expired or revoked: Rucio answers 401 to it
        token.write_text("alice-0000000000000000000000000000000000")
    second = f"tok-{uuid.uuid4().hex[:8]}"
    make_dataset(rucio_stack, "user.alice", second, 1)
    again = await astage([f"user.alice:{second}"], rse=NOTEBOOK, timeout=120,
                         settings=_bus(broker.url("alice")))  # fmt: skip
    assert again.ok, again
