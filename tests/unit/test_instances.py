"""The stager's Rucio instances: by name, the default for none, added from a watched file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.errors import PermanentError
from dlaas_stager import instances as module
from dlaas_stager.instances import Instances
from dlaas_stager.ports import Catalog
from dlaas_stager.settings import RucioSettings
from tests.fakes.catalog import FakeCatalog


def _make(made: list[str]) -> Callable[[RucioSettings], Catalog]:
    def make(settings: RucioSettings) -> FakeCatalog:
        made.append(settings.host)
        return FakeCatalog()

    return make


def _write(path: Path, hosts: dict[str, str], stamp: float) -> None:
    path.write_text(json.dumps({name: {"host": host} for name, host in hosts.items()}))
    os.utime(path, (stamp, stamp))  # a new mtime each write, however fast the test


def test_a_request_gets_its_instance_or_the_default(tmp_path: Path) -> None:
    made: list[str] = []
    default = RucioSettings(host="https://main")
    found = Instances("main", {"main": default}, _make(made))
    assert found.name_of(None) == "main"
    assert found.catalog(None) is found.catalog("main")  # made once, when first needed
    assert made == ["https://main"]
    with pytest.raises(
        PermanentError, match=r"unknown Rucio instance 'other' \(known: main\)"
    ):
        found.catalog("other")
    assert found.batcher("main") is found.batcher("main")


def test_an_instance_is_added_from_its_file_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "RELOAD_EVERY_S", 0.0)
    path = tmp_path / "instances.json"
    made: list[str] = []
    found = Instances(
        "main",
        {"main": RucioSettings(host="https://main")},
        _make(made),
        file=path,
    )
    assert not found.knows("escape2")  # no file yet
    _write(path, {"escape2": "https://two"}, 1_000)
    assert found.knows("escape2")
    first = found.catalog("escape2")
    path.write_text("{not json")
    os.utime(path, (2_000, 2_000))
    assert found.knows("escape2")  # a broken file keeps what was there
    assert found.catalog("escape2") is first
    _write(path, {"escape2": "https://two-moved"}, 3_000)
    assert found.catalog("escape2") is not first  # changed settings: a fresh catalog
    assert made == ["https://two", "https://two-moved"]
    assert found.names() == ["escape2", "main"]
