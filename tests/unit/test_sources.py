"""Request sources in the formats users already have: DID files, ESAP baskets, notebooks."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from dlaas.client import sources

BASKET = {"count": 1, "results": [{"user_name": "jdoe", "shopping_cart": [
    {"user_profile": "jdoe", "item_data": json.dumps({"archive": "rucio", "record": {
        "scope": "ESCAPE_CTA", "name": "run_0042.fits", "type": "FILE", "bytes": 104857600}})},
    {"user_profile": "jdoe", "item_data": {"archive": "rucio", "record": {
        "scope": "ESCAPE_LOFAR", "name": "L123456_SB000", "type": "DATASET", "bytes": None}}},
    {"user_profile": "jdoe", "item_data": json.dumps({"archive": "zooniverse", "catalog": "x"})},
]}]}  # fmt: skip

NOTEBOOK = {
    "cells": [], "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"rucio_attachments": [
        {"did": "user.alice:ds2", "variableName": "ds", "type": "collection"},
        {"did": "ESCAPE_CTA:run_0042.fits", "variableName": "run", "type": "file"},
    ]},
}  # fmt: skip


def test_a_basket_yields_its_rucio_items_and_says_what_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "basket.json"
    path.write_text(json.dumps(BASKET))
    selection = sources.collect([], [path])
    assert selection.dids == ["ESCAPE_CTA:run_0042.fits", "ESCAPE_LOFAR:L123456_SB000"]
    assert selection.skipped == [f"{path} item 2: archive 'zooniverse' is not Rucio"]


def test_a_notebook_and_a_did_file_merge_with_arguments_each_did_once(
    tmp_path: Path,
) -> None:
    notebook = tmp_path / "analysis.ipynb"
    notebook.write_text(json.dumps(NOTEBOOK))
    listing = tmp_path / "dids.txt"
    listing.write_text("# my picks\nuser.alice:ds2\n\nuser.alice:extra  # and this\n")
    selection = sources.collect(["user.alice:ds2"], [notebook, listing])
    assert selection.dids == [
        "user.alice:ds2",
        "ESCAPE_CTA:run_0042.fits",
        "user.alice:extra",
    ]


def test_bad_entries_are_named_where_they_came_from(tmp_path: Path) -> None:
    listing = tmp_path / "dids.txt"
    listing.write_text("user.alice:ok\nnot a did\n")
    with pytest.raises(sources.SourceError, match=r"dids.txt:2"):
        sources.collect([], [listing])
    plain = tmp_path / "plain.ipynb"
    plain.write_text(json.dumps({"cells": [], "metadata": {}}))
    with pytest.raises(sources.SourceError, match="no rucio_attachments"):
        sources.collect([], [plain])


class _Esap(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == "Bearer t0ken"
        body = json.dumps(BASKET if ok else {"detail": "unauthorised"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def esap() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Esap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_basket_is_fetched_from_the_esap_api_with_the_users_token(
    esap: str,
) -> None:
    document = await asyncio.to_thread(sources.fetch_basket, esap, "t0ken")
    assert sources.collect([], [], [document]).dids[0] == "ESCAPE_CTA:run_0042.fits"
    with pytest.raises(sources.SourceError, match="cannot read the basket"):
        await asyncio.to_thread(sources.fetch_basket, esap, "wrong")
