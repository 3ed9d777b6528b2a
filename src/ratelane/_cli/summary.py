"""What ``ratelane run`` tells people: the end-of-run summary and why a run stopped.

Pure formatting over plain values, so it is tested without a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ratelane._core.models import LatencySample, RunStats
from ratelane._files.file_run import FileRunSummary
from ratelane._files.progress import compact_number, progress_postfix

from .operating import failure_advice, operating_rows, raised_cap, spent_text

__all__ = [
    "LatencySample",
    "RunSummary",
    "compact_number",
    "failure_advice",
    "format_summary",
    "progress_postfix",
    "raised_cap",
    "spent_text",
    "stop_cause",
]


#: Hints for a fatal stop, by the HTTP status of the answer that caused it. Chosen by
#: status, not by ``error.code``: gateways such as LiteLLM send the status as the
#: code (``"401"``), so codes alone would miss a wrong key behind a proxy.
_STATUS_CAUSES: dict[int, tuple[str, str]] = {
    401: ("invalid API key", "check OPENAI_API_KEY (and OPENAI_BASE_URL)"),
    402: ("payment required", "add credit or raise the limit on the account's billing page"),
    403: (
        "permission denied",
        "check that the key's project may use this model and endpoint (and OPENAI_BASE_URL)",
    ),
    429: ("quota exhausted", "add credit or raise the limit on the account's billing page"),
}
#: By the stop reason (the error code), when the status says nothing more specific.
_REASON_CAUSES: dict[str, tuple[str, str]] = {
    "invalid_api_key": _STATUS_CAUSES[401],
    "insufficient_quota": _STATUS_CAUSES[429],
    "billing_hard_limit_reached": ("spending limit reached", "raise the account's spending limit"),
    "max_cost": ("spend cap reached", "raise --max-cost (max_cost=)"),
    "error_streak": (
        "a streak of identical errors",
        "read the errors file to see why every request failed the same way",
    ),
}
_FALLBACK_CAUSE = "fix the cause"


def _status_of(reason: str | None, status: int | None) -> int | None:
    """The HTTP status, or one spelled in the reason (``"401"``, ``"http_401"``)."""
    if status is not None or reason is None:
        return status
    digits = reason.removeprefix("http_")
    return int(digits) if digits.isdigit() and len(digits) == 3 else None


def stop_cause(reason: str | None, status: int | None) -> tuple[str, str]:
    """``(label, hint)`` for a fatal stop with ``reason`` after an answer with ``status``.

    The label names the reason and the status (``invalid_api_key, HTTP 401``);
    the hint comes from the reason when it is one we know (quota, billing
    limit, error streak), else from the status (401 key, 402/429 billing, 403
    permission), else a generic "fix the cause".
    """
    status = _status_of(reason, status)
    known = _REASON_CAUSES.get(reason or "")
    if known is not None and reason != "error_streak":
        hint = known[1]
    elif status in _STATUS_CAUSES and reason != "error_streak":
        hint = _STATUS_CAUSES[status][1]
    elif known is not None:
        hint = known[1]
    else:
        hint = _FALLBACK_CAUSE
    parts = []
    if reason and _status_of(reason, None) is None:
        parts.append(reason)
    elif status in _STATUS_CAUSES:
        parts.append(_STATUS_CAUSES[status][0])
    if status is not None:
        parts.append(f"HTTP {status}")
    return ", ".join(parts) or "unknown cause", hint


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
    # Operating a run (issue 14).
    spent_usd: float | None = None
    max_cost_usd: float | None = None
    cache_problem: str | None = None
    #: ``--shard I/N`` (issue 13): ``lines`` are this shard's, of ``input_lines`` in INPUT.
    shard: str | None = None
    input_lines: int = 0

    @classmethod
    def of(cls, run: FileRunSummary, *, headline: str) -> RunSummary:
        return cls(
            headline=headline,
            lines=run.lines,
            skipped=run.skipped,
            remaining=run.remaining,
            stats=run.stats,
            output_path=run.output_path,
            errors_path=run.errors_path,
            learned_rpm=run.learned_rpm,
            learned_tpm=run.learned_tpm,
            spent_usd=run.spent_usd,
            max_cost_usd=run.max_cost_usd,
            cache_problem=run.cache_problem,
            shard=str(run.shard) if run.shard is not None else None,
            input_lines=run.input_lines,
        )


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
    if summary.shard is not None:  # issue 13
        rows.append(
            (
                "shard",
                f"{summary.shard}: {summary.lines:,} of INPUT's {summary.input_lines:,} lines "
                "(the others belong to other shards; `ratelane merge` combines their OUTPUTs)",
            )
        )
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
        if stats.latencies_s:  # none from the Batch API (issue 11): no latency row
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
    rows += operating_rows(  # issue 14
        stats,
        spent_usd=summary.spent_usd,
        max_cost_usd=summary.max_cost_usd,
        cache_problem=summary.cache_problem,
    )
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
