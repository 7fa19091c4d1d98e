"""The services' event loop: uvloop by default, asyncio's on request or without uvloop."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest
import uvloop

from dlaas.bus.service import loop_factory
from dlaas.settings import ServiceSettings


def test_a_service_runs_on_uvloop_by_default() -> None:
    factory = loop_factory(ServiceSettings().event_loop)
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        loop.close()


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLAAS_EVENT_LOOP", "asyncio")
    assert loop_factory(ServiceSettings().event_loop) is None


def test_asyncio_when_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def without_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_uvloop)
    assert loop_factory("uvloop") is None
