"""What ``ratelane run`` tells people: the progress-bar postfix and the end-of-run summary.

Pure formatting over plain values, so it is tested without a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ratelane._core.models import LatencySample, RunStats

__all__ = [
    "LatencySample",
    "RunSummary",
    "compact_number",
    "format_summary",
    "progress_postfix",
]


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


def progress_postfix(
    *,
    succeeded: int,
    failed: int,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    cooldowns: int,
    cooling_down: bool,
) -> str:
    """The text after the bar: ``ok=980 failed=2 rpm=5.91k tpm=1.97M cooldowns=1``.

    ``rpm``/``tpm`` are the rates the governor currently aims for (learned
    limits times headroom, lowered after a 429); ``∞`` when unlimited.
    """

    def rate(value: float | None) -> str:
        return "∞" if value is None else compact_number(value)

    text = (
        f"ok={succeeded:,} failed={failed:,} "
        f"rpm={rate(requests_per_minute)} tpm={rate(tokens_per_minute)} cooldowns={cooldowns}"
    )
    return text + " (cooling down)" if cooling_down else text


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """Everything the end-of-run summary reports.

    ``lines``: requests in INPUT; ``skipped``: lines not sent because OUTPUT
    already had their success; ``remaining``: lines that still lack a success
    (failed this run, or never sent because the run stopped early);
    ``headline``: one line saying how the run ended.
    """

    headline: str
    lines: int
    skipped: int
    remaining: int
    stats: RunStats
    output_path: Path
    errors_path: Path
    learned_rpm: float | None = None
    learned_tpm: float | None = None


def format_summary(summary: RunSummary) -> str:
    """A short multi-line report for stderr."""
    stats = summary.stats
    rows: list[tuple[str, str]] = [
        (
            "requests",
            f"{stats.succeeded:,} ok, {stats.failed:,} failed, "
            f"{summary.skipped:,} skipped (already in OUTPUT) of {summary.lines:,} lines",
        ),
    ]
    if summary.remaining:
        rows.append(("left", f"{summary.remaining:,} lines still need a success"))
    if stats.completed:
        rows.append(
            (
                "throughput",
                f"{stats.requests_per_s:,.1f} requests/s over {_seconds(stats.elapsed_s)}, "
                f"{stats.attempts:,} attempts, {stats.retried:,} requests retried",
            )
        )
        rows.append(
            (
                "latency",
                f"p50 {_seconds(stats.latency_percentile(50))}, "
                f"p95 {_seconds(stats.latency_percentile(95))}, "
                f"p99 {_seconds(stats.latency_percentile(99))}",
            )
        )
        rows.append(
            (
                "tokens",
                f"input {stats.input_tokens:,} (cached {stats.cached_tokens:,}), "
                f"output {stats.output_tokens:,} (reasoning {stats.reasoning_tokens:,})",
            )
        )
    if stats.cost_usd is not None:
        rows.append(("cost", f"about ${stats.cost_usd:,.4f}"))
    limits = ""
    if summary.learned_rpm is not None or summary.learned_tpm is not None:
        limits = (
            f"; server limits rpm {compact_number(summary.learned_rpm)}, "
            f"tpm {compact_number(summary.learned_tpm)}"
        )
    rows.append(
        (
            "rate limits",
            f"{stats.rate_limited:,} answered 429, {stats.cooldowns:,} "
            f"{'cool-down' if stats.cooldowns == 1 else 'cool-downs'}{limits}",
        )
    )
    rows.append(("output", str(summary.output_path)))
    rows.append(
        (
            "errors",
            f"{summary.errors_path} ({stats.failed:,} failed this run)"
            if stats.failed
            else f"{summary.errors_path} (empty)",
        )
    )
    width = max(len(label) for label, _ in rows)
    body = "\n".join(f"  {label:<{width}}  {text}" for label, text in rows)
    return f"{summary.headline}\n{body}"
