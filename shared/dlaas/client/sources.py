"""Where users' choices already are: DID arguments, DID files, ESAP baskets, notebooks.

Every source yields DIDs; :func:`collect` merges them, each once, in the order first seen, and
says what it skipped (items of other archives, comments) so the user knows.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from dlaas.contracts.base import DidStr

_DID: TypeAdapter[str] = TypeAdapter(DidStr)


class SourceError(ValueError):
    """A source that cannot be read as it is, with what to do about it."""


@dataclass
class Selection:
    """DIDs to stage, and what was left out and why."""

    dids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, did: str, where: str) -> None:
        """Add a DID once; an invalid one is a clear error naming where it came from."""
        try:
            checked = _DID.validate_python(did.strip())
        except ValidationError as exc:
            raise SourceError(f"{where}: {exc.errors()[0]['msg']}") from None
        if checked not in self.dids:
            self.dids.append(checked)


def did_file(path: Path) -> Iterator[tuple[str, str]]:
    """One DID per line; blank lines and ``#`` comments ignored."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            yield text, f"{path}:{number}"


def notebook(path: Path) -> Iterator[tuple[str, str]]:
    """The ``rucio_attachments`` of a notebook made with the Rucio JupyterLab extension."""
    try:
        metadata = json.loads(path.read_text())["metadata"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SourceError(f"{path}: not a notebook ({exc})") from None
    attachments = metadata.get("rucio_attachments") or []
    if not attachments:
        raise SourceError(f"{path}: the notebook has no rucio_attachments")
    for index, item in enumerate(attachments):
        yield (
            str(item.get("did", "")),
            f"{path}: attachment {index} ({item.get('variableName')})",
        )


def _basket_items(document: object) -> list[object]:
    if isinstance(document, dict) and "results" in document:  # the API's paginated answer
        results = document["results"]
        first = results[0] if isinstance(results, list) and results else {}
        return list(first.get("shopping_cart", [])) if isinstance(first, dict) else []
    if isinstance(document, dict) and "shopping_cart" in document:
        return list(document["shopping_cart"])
    if isinstance(document, list):
        return document
    raise SourceError("not an ESAP basket: expected results[0].shopping_cart")


def esap_basket(
    document: object, where: str, skipped: list[str]
) -> Iterator[tuple[str, str]]:
    """Rucio items of an ESAP shopping basket (``item_data`` as a JSON string or an object)."""
    for index, item in enumerate(_basket_items(document)):
        data = item.get("item_data", item) if isinstance(item, dict) else item
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError:
                skipped.append(f"{where} item {index}: item_data is not JSON")
                continue
        if not isinstance(data, dict) or data.get("archive") != "rucio":
            archive = data.get("archive") if isinstance(data, dict) else None
            skipped.append(f"{where} item {index}: archive {archive!r} is not Rucio")
            continue
        record = data.get("record") or {}
        yield f"{record.get('scope')}:{record.get('name')}", f"{where} item {index}"


def fetch_basket(url: str, token: str, timeout: float = 30) -> object:
    """The user's basket from an ESAP API gateway, with their bearer token (never stored)."""
    if not url.startswith(("https://", "http://")):
        raise SourceError(f"not an HTTP(S) URL: {url}")
    endpoint = url.rstrip("/") + "/esap-api/accounts/user-profiles/"
    headers = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(endpoint, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            document: object = json.loads(response.read())
            return document
    except OSError as exc:
        raise SourceError(f"cannot read the basket at {endpoint}: {exc}") from None


def from_file(path: Path, skipped: list[str]) -> Iterator[tuple[str, str]]:
    """A file of any supported kind, recognised by its name and content."""
    if path.suffix == ".ipynb":
        yield from notebook(path)
        return
    text = path.read_text()
    if text.lstrip().startswith(("{", "[")):
        yield from esap_basket(json.loads(text), str(path), skipped)
        return
    yield from did_file(path)


def collect(
    dids: Iterable[str], files: Iterable[Path], baskets: Iterable[object] = ()
) -> Selection:
    """Merge every source into one selection, deduplicated by DID."""
    selection = Selection()
    for did in dids:
        selection.add(did, f"argument {did!r}")
    for path in files:
        for did, where in from_file(path, selection.skipped):
            selection.add(did, where)
    for index, document in enumerate(baskets):
        for did, where in esap_basket(
            document, f"ESAP basket {index}", selection.skipped
        ):
            selection.add(did, where)
    return selection
