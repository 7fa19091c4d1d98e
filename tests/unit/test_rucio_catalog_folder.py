"""The stager's Rucio catalog cleans up the private config it made, and its trace in the env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlaas_stager.adapters.rucio import _remove_folder


def test_a_catalog_gone_takes_its_config_and_rucio_config_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dlaas-rucio-x"
    folder.mkdir()
    config = folder / "rucio.cfg"
    config.write_text("[client]\n")
    monkeypatch.setenv("RUCIO_CONFIG", str(config))
    _remove_folder(folder, str(config))
    assert not folder.exists()
    # a child started later (a benchmark, a CLI) must not be told to read a file that is gone
    assert "RUCIO_CONFIG" not in os.environ


def test_an_operators_rucio_config_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dlaas-rucio-y"
    folder.mkdir()
    monkeypatch.setenv("RUCIO_CONFIG", "/opt/rucio/etc/rucio.cfg")
    _remove_folder(folder, str(folder / "rucio.cfg"))
    assert os.environ["RUCIO_CONFIG"] == "/opt/rucio/etc/rucio.cfg"
