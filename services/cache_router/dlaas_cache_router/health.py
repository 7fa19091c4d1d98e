"""Which caches are alive: probe results folded into a state per cache (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Change = Literal["died", "revived"] | None


@dataclass
class _State:
    alive: bool = True  # optimistic until probed: a fresh router routes at once
    failures: int = 0
    reason: str = ""


@dataclass
class HealthBook:
    """Alive unless ``failures_to_dead`` probes in a row failed; one success revives."""

    failures_to_dead: int = 1
    _states: dict[str, _State] = field(default_factory=dict)

    def alive(self, cache: str) -> bool:
        """Whether ``cache`` is taken as alive (unknown caches are)."""
        state = self._states.get(cache)
        return state is None or state.alive

    def record(self, cache: str, *, ok: bool, reason: str = "") -> Change:
        """Fold one probe result in; the change of state it caused, if any."""
        state = self._states.setdefault(cache, _State())
        if ok:
            state.failures, state.reason = 0, ""
            if state.alive:
                return None
            state.alive = True
            return "revived"
        state.failures += 1
        state.reason = reason
        if state.alive and state.failures >= self.failures_to_dead:
            state.alive = False
            return "died"
        return None

    def dead(self) -> dict[str, str]:
        """The dead caches and the last reason each failed."""
        return {cache: s.reason for cache, s in self._states.items() if not s.alive}
