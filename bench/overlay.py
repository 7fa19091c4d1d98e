"""Run the services with code of another git revision (before/after a change).

``bus_overlay``: only the bus files; ``code_overlay``: the shared library and every service.
The bus overlay's ``dlaas`` and ``dlaas.bus`` packages hold the old ``consumer``, ``connection``
and ``decoders`` modules and fall through to this checkout for every other module, so the
services' own code is the same on both sides of the comparison.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

BUS_FILES = ("consumer.py", "connection.py", "decoders.py")
ROOT = Path(__file__).resolve().parent.parent


def _falls_through(real: Path) -> str:
    init = real / "__init__.py"
    return (
        f"__path__.append({str(real)!r})\n"
        f"exec(compile(open({str(init)!r}).read(), {str(init)!r}, 'exec'))\n"
    )


def bus_overlay(revision: str, into: Path) -> Path:
    """Write the overlay of ``revision``'s bus under ``into``; the folder for PYTHONPATH."""
    real = ROOT / "shared" / "dlaas"
    bus = into / "dlaas" / "bus"
    bus.mkdir(parents=True, exist_ok=True)
    (into / "dlaas" / "__init__.py").write_text(_falls_through(real))
    (bus / "__init__.py").write_text(_falls_through(real / "bus"))
    for name in BUS_FILES:
        shown = subprocess.run(  # noqa: S603  (git, our own checkout)
            ["git", "-C", str(ROOT), "show", f"{revision}:shared/dlaas/bus/{name}"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        )
        (bus / name).write_text(shown.stdout)
    return into


PACKAGES = (
    "shared/dlaas",
    "services/stager/dlaas_stager",
    "services/cache_router/dlaas_cache_router",
    "services/fuse_agent/dlaas_fuse_agent",
    "services/notifier/dlaas_notifier",
)


def code_overlay(revision: str, into: Path) -> str:
    """``revision``'s library and services under ``into``; the PYTHONPATH that runs them."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(  # noqa: S603  (git, our own checkout)
        ["git", "-C", str(ROOT), "archive", revision, *PACKAGES],  # noqa: S607
        capture_output=True,
        check=True,
    )
    subprocess.run(  # noqa: S603  (tar, our own archive)
        ["tar", "-x", "-C", str(into)],  # noqa: S607
        input=archive.stdout,
        check=True,
    )
    return ":".join(str(into / Path(p).parent) for p in PACKAGES)
