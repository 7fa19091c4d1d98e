"""effective_config: every setting shown, no secret leaked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from dlaas.config_dump import MASK, effective_config, mask_url
from dlaas.settings import ServiceSettings
from dlaas_cache_router.settings import CacheRouterSettings
from dlaas_fuse_agent.settings import FuseAgentSettings
from dlaas_stager.settings import StagerSettings
from tests.ops.tools import ROOT

BUS_URL = "amqps://dlaas-stager:s3cr3t-bus@broker.example.org:5671/dlaas"
DB_URL = "postgresql+asyncpg://stager:s3cr3t-db@db.example.org:5432/dlaas"


@pytest.fixture
def stager_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLAAS_BUS__URL", BUS_URL)
    monkeypatch.setenv("DLAAS_BUS__RETRY_DELAYS_S", "[1, 2]")
    monkeypatch.setenv("DLAAS_RUCIO__PASSWORD", "s3cr3t-rucio")
    monkeypatch.setenv("DLAAS_RUCIO__USERNAME", "dlaas")
    monkeypatch.setenv("DLAAS_STAGER__DB_URL", DB_URL)
    monkeypatch.setenv("DLAAS_STAGER__ACCOUNTS", '{"alice": "alice_rucio"}')
    monkeypatch.setenv("DLAAS_GRACE_S", "20")


def test_secrets_are_masked_and_everything_else_shown(stager_env) -> None:
    config = effective_config(StagerSettings())

    text = json.dumps(config)  # JSON-ready as it is
    assert "s3cr3t" not in text
    assert (
        config["bus"]["url"]
        == f"amqps://dlaas-stager:{MASK}@broker.example.org:5671/dlaas"
    )
    assert config["bus"]["retry_delays_s"] == [1.0, 2.0]
    assert config["rucio"]["password"] == MASK
    assert config["rucio"]["username"] == "dlaas"
    assert config["stager"]["db_url"] == (
        f"postgresql+asyncpg://stager:{MASK}@db.example.org:5432/dlaas"
    )
    assert config["stager"]["accounts"] == {"alice": "alice_rucio"}
    assert config["grace_s"] == 20.0
    assert config["http_port"] is None


def test_every_field_of_every_section_is_listed(stager_env) -> None:
    settings = StagerSettings()
    config = effective_config(settings)

    assert set(config) == set(StagerSettings.model_fields)
    for section in ("bus", "rucio", "stager"):
        assert set(config[section]) == set(type(getattr(settings, section)).model_fields)


def test_paths_and_nested_models_become_plain_values(monkeypatch) -> None:
    monkeypatch.setenv(
        "DLAAS_FUSE__MOUNTS", '[{"rse": "NOTEBOOK", "mount_path": "/mnt/rucio/NOTEBOOK"}]'
    )
    config = effective_config(FuseAgentSettings())

    (mount,) = config["fuse"]["mounts"]
    assert mount["rse"] == "NOTEBOOK"
    assert mount["mount_path"] == "/mnt/rucio/NOTEBOOK"
    assert mount["path_begins_at"] == 0
    assert config["fuse"]["views_root"] == str(Path("/var/lib/dlaas/views"))


def test_a_secret_that_is_not_a_url_is_hidden_whole(monkeypatch) -> None:
    monkeypatch.setenv("DLAAS_BUS__URL", "not-a-url-but-secret")
    assert effective_config(ServiceSettings())["bus"]["url"] == MASK


def test_a_secret_url_without_password_is_hidden_whole(monkeypatch) -> None:
    monkeypatch.setenv("DLAAS_BUS__URL", "amqp://broker.example.org/dlaas")
    assert effective_config(ServiceSettings())["bus"]["url"] == MASK


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://u:p@h/v", f"amqp://u:{MASK}@h/v"),
        ("amqp://u:p%40x@h:5672/", f"amqp://u:{MASK}@h:5672/"),
        ("amqp://u:p@ss@h/", f"amqp://u:{MASK}@h/"),  # an unencoded @ in the password
        ("amqp://u@h/", "amqp://u@h/"),
        ("root://xcache.example.org:1094//data", "root://xcache.example.org:1094//data"),
        ("sqlite+aiosqlite:///dlaas-stager.db", "sqlite+aiosqlite:///dlaas-stager.db"),
        ("plain text with an @ sign", "plain text with an @ sign"),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


def _variables(model: type[BaseModel], prefix: str = "DLAAS_") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        key = f"{prefix}{name.upper()}"
        found |= _variables(annotation, f"{key}__") if nested else {key}  # type: ignore[arg-type]
    return found


@pytest.mark.parametrize(
    "settings", [ServiceSettings, StagerSettings, CacheRouterSettings, FuseAgentSettings]
)
def test_the_operators_guide_lists_every_variable(settings: type[BaseModel]) -> None:
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = sorted(v for v in _variables(settings) if f"`{v}`" not in guide)
    assert not missing, f"docs/operations.md, section Configure, lacks {missing}"
