"""What a process does while the shared budget in Redis is out of reach."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ratelane._core.errors import ConfigurationError

__all__ = ["FallbackPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackPolicy:
    """What a process does while Redis is out of reach.

    Each of the ``N`` processes seen recently paces alone at ``limit / N``, so
    together they stay within the limit (a process that saw no registration
    counts itself: ``N >= 1``). Redis is tried again every ``probe_interval_s``
    seconds; the first answer re-joins the shared budget.
    """

    probe_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.probe_interval_s) and self.probe_interval_s > 0):
            raise ConfigurationError(
                f"probe_interval_s must be a positive number of seconds, "
                f"got {self.probe_interval_s!r}"
            )

    @staticmethod
    def local_limit(shared_per_minute: float | None, processes: int) -> float | None:
        """This process's share while alone: ``shared / max(1, processes)``."""
        if shared_per_minute is None:
            return None
        return shared_per_minute / max(1, processes)

    def should_probe(self, *, now: float, last_probe_at: float) -> bool:
        """Whether to try Redis again (re-join) at ``now``."""
        return now - last_probe_at >= self.probe_interval_s
