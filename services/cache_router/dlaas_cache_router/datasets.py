"""Which files belong together, and which of them to warm after a miss (pure, bounded).

The router remembers the files it routed, grouped by dataset (today: by stage request, as
the stager does not name a file's dataset). When a cache misses one of them, the others are
warmed, within a budget of files and bytes per dataset per time window; a file known to be
in its cache (missed or warmed within the window) is not warmed again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoutedFile:
    """A file the router sent through a cache."""

    did: str
    path: str  # storage path, how caches name it in their monitoring
    url: str  # where it is read: through its cache
    bytes: int
    adler32: str | None


@dataclass(frozen=True)
class Budget:
    """Most files and bytes warmed per dataset per ``window_s``."""

    files: int
    bytes: int
    window_s: float


@dataclass
class _Dataset:
    files: dict[str, RoutedFile] = field(default_factory=dict)  # by path
    cached_at: dict[str, float] = field(default_factory=dict)  # path -> when known cached
    spent: list[tuple[float, int]] = field(default_factory=list)  # (when, bytes) warmed
    seen_at: float = 0.0


@dataclass(frozen=True)
class WarmPlan:
    """The files to warm for a dataset after one of its files missed."""

    dataset: str
    files: tuple[RoutedFile, ...]
    skipped: int  # left out by the budget
    at: float  # when the budget was reserved


class Datasets:
    """Routed files by dataset, with the warm budget's bookkeeping."""

    def __init__(self, remember_s: float, max_files: int) -> None:
        self.remember_s = remember_s
        self.max_files = max_files
        self._sets: OrderedDict[str, _Dataset] = OrderedDict()
        self._by_path: dict[str, str] = {}
        self._count = 0

    def remember(self, dataset: str, file: RoutedFile, now: float) -> None:
        """Note that ``file`` of ``dataset`` was routed through a cache."""
        entry = self._sets.setdefault(dataset, _Dataset())
        self._sets.move_to_end(dataset)
        entry.seen_at = now
        self._count += file.path not in entry.files
        entry.files[file.path] = file
        self._by_path[file.path] = dataset
        self._forget(now)

    def dataset_of(self, path: str) -> str | None:
        """The dataset ``path`` was last routed in."""
        return self._by_path.get(path)

    def plan_warm(self, missed: str, budget: Budget, now: float) -> WarmPlan | None:
        """Reserve the budget for the missed file's siblings; None for an unknown file."""
        key = self._by_path.get(missed)
        if key is None:
            return None
        entry = self._sets[key]
        entry.cached_at[missed] = now
        since = now - budget.window_s
        entry.spent = [s for s in entry.spent if s[0] > since]
        files, spent = len(entry.spent), sum(b for _, b in entry.spent)
        chosen: list[RoutedFile] = []
        skipped = 0
        for file in entry.files.values():
            if entry.cached_at.get(file.path, -math.inf) > since:
                continue
            if files + 1 > budget.files or spent + file.bytes > budget.bytes:
                skipped += 1
                continue
            files, spent = files + 1, spent + file.bytes
            chosen.append(file)
            entry.cached_at[file.path] = now
            entry.spent.append((now, file.bytes))
        return WarmPlan(key, tuple(chosen), skipped, now)

    def warm_failed(self, plan: WarmPlan, file: RoutedFile) -> None:
        """Give back a failed warm's budget, so that a later miss may try it again."""
        entry = self._sets.get(plan.dataset)
        if entry is None:
            return
        entry.cached_at.pop(file.path, None)
        if (plan.at, file.bytes) in entry.spent:
            entry.spent.remove((plan.at, file.bytes))

    def _forget(self, now: float) -> None:
        while self._sets:
            key, oldest = next(iter(self._sets.items()))
            if oldest.seen_at > now - self.remember_s and self._count <= self.max_files:
                return
            del self._sets[key]
            self._count -= len(oldest.files)
            for path in oldest.files:
                if self._by_path.get(path) == key:
                    del self._by_path[path]
