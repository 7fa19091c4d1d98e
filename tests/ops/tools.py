"""Finding the tools the operations tests need: skip locally, fail under CI when one is missing."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]


def need(reason: str) -> NoReturn:
    """Skip locally, fail under CI: a missing tool in CI is a broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def which(name: str) -> str | None:
    """A command from this virtualenv first (dev tools), then from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def module(name: str, install: str) -> ModuleType:
    """Import ``name``, or skip (fail under CI) saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        need(f"Python module {name} missing: {install}")
