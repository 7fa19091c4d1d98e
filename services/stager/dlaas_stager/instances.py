"""The Rucio instances the stager serves, by name, each with its own catalog and batcher.

A request names its instance (or gets the default); hermes publishes each instance's events
with the instance's name as routing key, so an event is only ever matched against the
requests of its own instance, whatever DID and RSE names the instances share. Instances
besides the default come from settings and from an optional JSON file that is read again when
it changes: operators add an instance without restarting anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from pydantic import TypeAdapter, ValidationError

from dlaas.errors import PermanentError
from dlaas_stager.batching import ReplicaBatcher
from dlaas_stager.ports import Catalog
from dlaas_stager.settings import RucioSettings

log = structlog.get_logger(__name__)

_FILE = TypeAdapter(dict[str, RucioSettings])
RELOAD_EVERY_S = 1.0  # the file is looked at (one stat) at most this often


class Instances:
    """Catalogs (and replica batchers) by instance name, created when first needed."""

    def __init__(
        self,
        default: str,
        settings: Mapping[str, RucioSettings],
        make_catalog: Callable[[RucioSettings], Catalog],
        *,
        file: Path | None = None,
        batch_window_s: float = 0.05,
        catalogs: Mapping[str, Catalog] | None = None,
    ) -> None:
        self.default = default
        self._settings = dict(settings)
        self._from_settings = dict(settings)
        self._make = make_catalog
        self._file = file
        self._window = batch_window_s
        self._catalogs: dict[str, Catalog] = dict(catalogs or {})
        self._batchers: dict[str, ReplicaBatcher] = {}
        self._stamp: float | None = None
        self._looked_at = 0.0
        self._unknown_told: set[str] = set()
        self._reload()

    @classmethod
    def single(cls, catalog: Catalog, name: str = "default") -> Instances:
        """One instance with a given catalog (tests, benchmarks)."""
        return cls(name, {}, lambda _: catalog, catalogs={name: catalog})

    def names(self) -> list[str]:
        """The instances known now."""
        self._maybe_reload()
        return sorted({*self._settings, *self._catalogs})

    def knows(self, name: str) -> bool:
        """Whether ``name`` is an instance served here (re-reading the file if it changed)."""
        self._maybe_reload()
        return name in self._settings or name in self._catalogs

    def name_of(self, requested: str | None) -> str:
        """The instance a request means: the one it names, else the default."""
        return requested or self.default

    def catalog(self, name: str | None) -> Catalog:
        """The catalog of instance ``name`` (the default for None).

        Raises:
            PermanentError: no such instance is configured.
        """
        name = self.name_of(name)
        self._maybe_reload()  # settings changed in the file: a fresh catalog
        found = self._catalogs.get(name)
        if found is not None:
            return found
        if not self.knows(name):
            raise PermanentError(
                f"unknown Rucio instance {name!r} (known: {', '.join(self.names())})"
            )
        found = self._catalogs[name] = self._make(self._settings[name])
        log.info("instance_connected", instance=name)
        return found

    def batcher(self, name: str) -> ReplicaBatcher:
        """The replica batcher of instance ``name`` (one per catalog)."""
        found = self._batchers.get(name)
        if found is None:
            found = self._batchers[name] = ReplicaBatcher(
                self.catalog(name), window_s=self._window
            )
        return found

    def tell_unknown(self, name: str) -> None:
        """Log, once per name, that events of an instance not served here are ignored."""
        if name not in self._unknown_told:
            self._unknown_told.add(name)
            log.warning(
                "hermes_instance_unknown",
                instance=name,
                known=self.names(),
                hint="its events are acked and ignored; add it to the instances",
            )

    def _maybe_reload(self) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if now - self._looked_at >= RELOAD_EVERY_S:
            self._looked_at = now
            self._reload()

    def _reload(self) -> None:
        if self._file is None:
            return
        try:
            stamp = self._file.stat().st_mtime
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            extra = {} if stamp is None else _FILE.validate_json(self._file.read_bytes())
        except (OSError, ValidationError, json.JSONDecodeError):
            log.exception("instances_file_invalid", file=str(self._file))
            return  # keep what we had
        before = self._settings
        self._settings = {**self._from_settings, **extra}
        for name, settings in extra.items():  # changed settings: a fresh catalog
            if name in before and before[name] != settings:
                self._catalogs.pop(name, None)
                self._batchers.pop(name, None)
        added = sorted(set(self._settings) - set(before))
        if added:
            log.info("instances_added", instances=added, file=str(self._file))
