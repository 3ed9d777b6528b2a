"""The progress bar of a file run: one tick per result, live counts and rates as its text."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from ratelane._core.models import RunStats
from ratelane._limits.governor import RateGovernor

__all__ = ["POSTFIX_INTERVAL_S", "Progress", "compact_number", "progress_postfix"]

#: Seconds between updates of the progress bar's ok/failed/limits text.
POSTFIX_INTERVAL_S = 0.25


def progress_postfix(
    *,
    succeeded: int,
    failed: int,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    cooldowns: int,
    cooling_down: bool,
    circuit: str | None = None,
) -> str:
    """The text after the bar: ``ok=980 failed=2 rpm=5.91k tpm=1.97M cooldowns=1``.

    ``rpm``/``tpm`` are the rates the governor currently aims for (learned
    limits times headroom, lowered after a 429); ``∞`` when unlimited.
    ``circuit``: the circuit breaker's state when it is not closed (issue 14).
    """

    def rate(value: float | None) -> str:
        return "∞" if value is None else compact_number(value)

    text = (
        f"ok={succeeded:,} failed={failed:,} "
        f"rpm={rate(requests_per_minute)} tpm={rate(tokens_per_minute)} cooldowns={cooldowns}"
    )
    if circuit is not None:
        text += f" (circuit {circuit})"
    return text + " (cooling down)" if cooling_down else text


def compact_number(value: float | None) -> str:
    """``950``, ``6k``, ``12.5k``, ``2M``, ``1.25M``; ``?`` for ``None`` (not known yet)."""
    if value is None:
        return "?"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            scaled = value / size
            text = f"{scaled:.3g}" if scaled < 1000 else f"{scaled:,.0f}"
            return text + suffix
    return f"{value:.0f}"


LiveState = Callable[[], tuple[RunStats, RateGovernor] | None]
#: The circuit breaker's state for the bar (``None``: closed or no breaker).
CircuitState = Callable[[], str | None]


class Progress:
    """A tqdm bar: one tick per result, the postfix text every POSTFIX_INTERVAL_S.

    ``live()`` returns the run's current stats and governor (``None`` before
    sending starts). Disabled, every method does nothing.
    """

    __slots__ = ("_circuit", "_live", "_next_postfix", "bar")

    def __init__(
        self, *, total: int, enabled: bool, live: LiveState, circuit: CircuitState | None = None
    ) -> None:
        self._live = live
        self._circuit = circuit
        self._next_postfix = 0.0
        self.bar: Any = (
            tqdm(total=total, unit="req", dynamic_ncols=True, mininterval=0.25, smoothing=0.05)
            if enabled
            else None
        )

    def tick(self) -> None:
        bar = self.bar
        if bar is None:
            return
        now = time.monotonic()
        if now >= self._next_postfix:
            # Before update(), so the refresh it may trigger shows current counts.
            self._next_postfix = now + POSTFIX_INTERVAL_S
            bar.set_postfix_str(self.postfix(), refresh=False)
        bar.update(1)

    def postfix(self) -> str:
        state = self._live()
        if state is None:
            return ""
        stats, governor = state
        return progress_postfix(
            succeeded=stats.succeeded,
            failed=stats.failed,
            requests_per_minute=governor.requests_per_minute,
            tokens_per_minute=governor.tokens_per_minute,
            cooldowns=governor.cooldowns,
            cooling_down=governor.cooling_down,
            circuit=self._circuit() if self._circuit is not None else None,
        )

    def exhausted(self, sent: int) -> None:
        """INPUT is read: the exact number of requests this run sends is known now."""
        if self.bar is not None:
            self.bar.total = sent
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.close()
