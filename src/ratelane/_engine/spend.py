"""A hard ceiling on spend: admit a request only if its worst case still fits under the cap.

The invariant, which makes the cap hold for what OUTPUT records::

    spent + reserved <= max_cost_usd     at every moment

``reserved`` is the worst case (every input token uncached, the whole output
cap used) of every request in flight. A request is admitted only if its own
worst case fits; when it finishes, its reservation is replaced by what the
server's ``usage`` says it cost, which is never more. So the spend recomputed
from OUTPUT's usage cannot pass the cap, whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import math

from ratelane._core.errors import ConfigurationError

__all__ = ["SpendCap"]


class SpendCap:
    """Reservations against ``max_cost_usd``; ``spent_usd`` starts from what earlier runs spent."""

    def __init__(self, max_cost_usd: float, *, spent_usd: float = 0.0) -> None:
        if not (max_cost_usd > 0 and math.isfinite(max_cost_usd)):
            raise ConfigurationError(
                f"max_cost must be a positive number of dollars, got {max_cost_usd!r}"
            )
        self.max_cost_usd = max_cost_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        #: Requests holding a reservation (a count: the float sum drifts off zero).
        self.holders = 0
        self.refused = 0
        self._settled: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"<SpendCap spent=${self.spent_usd:.4f} reserved=${self.reserved_usd:.4f} "
            f"cap=${self.max_cost_usd:.4f} refused={self.refused}>"
        )

    @property
    def exhausted(self) -> bool:
        """True once a request was refused: the run should stop admitting and end resumably."""
        return self.refused > 0

    def try_reserve(self, worst_case_usd: float) -> bool:
        """Reserve ``worst_case_usd`` if it fits under the cap; False (and counted) if not."""
        if self.spent_usd + self.reserved_usd + worst_case_usd > self.max_cost_usd:
            self.refused += 1
            return False
        self.reserved_usd += worst_case_usd
        self.holders += 1
        return True

    def fits(self, worst_case_usd: float) -> bool:
        """Whether ``worst_case_usd`` fits under the cap now (reserves nothing)."""
        return self.spent_usd + self.reserved_usd + worst_case_usd <= self.max_cost_usd

    async def settled(self) -> None:
        """Wait until some reserved request settles (the room under the cap may have grown)."""
        if self._settled is None:
            self._settled = asyncio.Event()
        await self._settled.wait()

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """A reserved request finished: it cost ``actual_usd`` (0 if it failed before billing)."""
        self.holders = max(0, self.holders - 1)
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd) if self.holders else 0.0
        self.spent_usd += actual_usd
        self.wake()

    def wake(self) -> None:
        """Wake every request waiting in :meth:`settled`, to look again."""
        event, self._settled = self._settled, None
        if event is not None:
            event.set()
