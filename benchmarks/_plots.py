"""PNG plots, when matplotlib is installed (the ``bench`` extra); otherwise a note.

Every function returns the written path, or ``None`` when plotting is
unavailable; :data:`UNAVAILABLE` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # the suite still runs; plots are skipped with a note
    plt = None

UNAVAILABLE = (
    None
    if plt is not None
    else "matplotlib not installed: plots skipped (pip install 'ratelane[bench]')"
)

Series = Sequence[float]


def _save(figure: Any, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def rate_against_limit(
    path: Path,
    *,
    title: str,
    ylabel: str,
    lines: dict[str, tuple[Series, Series]],
    limit: tuple[Series, Series],
    shade: tuple[float, float] | None = None,
) -> str | None:
    """Rate series (``label: (times, values)``) against a (possibly stepped) limit line."""
    if plt is None:
        return None
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for label, (times, values) in lines.items():
        axes.step(times, values, where="post", label=label, linewidth=1.4)
    axes.step(limit[0], limit[1], where="post", color="black", linestyle="--", label="limit")
    if shade is not None:
        axes.axvspan(*shade, color="grey", alpha=0.12, label="steady state")
    axes.set_xlabel("seconds since the first request")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    return _save(figure, path)


def bars(path: Path, *, title: str, ylabel: str, values: dict[str, float]) -> str | None:
    """One bar per label, log scale when the values span more than 20x."""
    if plt is None:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    labels = list(values)
    heights = [values[label] for label in labels]
    drawn = axes.bar(labels, heights, color=["#4c72b0", "#dd8452", "#c44e52", "#55a868"])
    axes.bar_label(drawn, fmt="%.0f")
    if heights and min(heights) > 0 and max(heights) / min(heights) > 20:
        axes.set_yscale("log")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)
