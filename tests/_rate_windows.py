"""How many events fall in the busiest window: the short-period quantum, measured."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["busiest_window"]


def busiest_window(times: Sequence[float], window_s: float) -> tuple[int, float]:
    """``(count, start)``: the most events in any ``window_s`` window, and where it starts."""
    ordered = sorted(times)
    best, at, start = 0, 0.0, 0
    for end, value in enumerate(ordered):
        while value - ordered[start] >= window_s:
            start += 1
        if end - start + 1 > best:
            best, at = end - start + 1, ordered[start]
    return best, at
