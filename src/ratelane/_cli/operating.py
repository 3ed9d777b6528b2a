"""What the summary says about operating a run (issue 14): spend, caches, outages, failures.

Pure formatting over plain values, tested without a run.
"""

from __future__ import annotations

import math

from ratelane._core.models import RunStats

__all__ = [
    "PROMPT_CACHE_MIN_TOKENS",
    "failure_advice",
    "operating_rows",
    "prompt_cache_hint",
    "raised_cap",
    "spent_text",
]

#: OpenAI caches prompt prefixes from 1,024 tokens on: shorter prompts never hit.
PROMPT_CACHE_MIN_TOKENS = 1024
#: Below this share of cached input tokens, long prompts suggest a missed prefix.
PROMPT_CACHE_LOW_SHARE = 0.2


def spent_text(spent_usd: float | None, max_cost_usd: float | None) -> str:
    """``$0.0123 of the $0.0150 cap spent (OUTPUT in all, recomputed from its usage)``."""
    spent = f"${spent_usd or 0.0:,.4f}"
    if max_cost_usd is None:
        return f"{spent} spent"
    return f"{spent} of the ${max_cost_usd:,.4f} cap spent (OUTPUT in all, from its usage)"


def raised_cap(cap_usd: float, spent_usd: float, *, done: int, remaining: int) -> float:
    """A higher cap to suggest: enough for the ``remaining`` lines at the average cost of
    the ``done`` ones, with a fifth to spare, and at least half again the old cap;
    rounded up to two significant digits::

        max(1.5 * cap, 1.2 * (spent + remaining * spent / done))    (2 * cap when done = 0)
    """
    if done > 0:
        target = max(1.5 * cap_usd, 1.2 * (spent_usd + remaining * spent_usd / done))
    else:  # no average to go by
        target = 2 * cap_usd
    if target <= 0:
        return 1.0
    scale = 10.0 ** (math.floor(math.log10(target)) - 1)
    return round(math.ceil(target / scale) * scale, 10)


def failure_advice(failed: int, transient: int) -> tuple[str, str]:
    """``(headline, hint)`` for a run that finished with ``failed`` lines, ``transient`` of
    them on transient errors (server errors, timeouts, connection errors after every
    attempt): those are not the lines' fault, and a later resume usually succeeds."""
    lines = "line" if failed == 1 else "lines"
    permanent = failed - transient
    if not transient:
        return (
            f"finished: {failed:,} {lines} failed permanently (see ERRORS)",
            "fix those lines in INPUT, then run the same command again to retry only them",
        )
    if not permanent:
        return (
            f"finished: {failed:,} {lines} failed on transient errors (server errors, "
            "timeouts or connection errors after every attempt; see ERRORS)",
            "nothing is wrong with those lines: run the same command again (later, if the "
            "service is still struggling) to retry only them",
        )
    return (
        f"finished: {failed:,} {lines} failed (see ERRORS): {transient:,} on transient errors "
        f"(server errors, timeouts, connection errors), {permanent:,} rejected by the server",
        "fix the rejected lines in INPUT (the transient ones need nothing), then run the same "
        "command again to retry only the failed lines",
    )


def prompt_cache_hint(stats: RunStats) -> str | None:
    """The provider's prompt caching: share of input tokens cached, and a hint when low.

    ``None`` with no input tokens. The hint appears when requests were long
    enough to be cached (``PROMPT_CACHE_MIN_TOKENS`` on average) but under
    ``PROMPT_CACHE_LOW_SHARE`` of their input was.
    """
    if stats.input_tokens <= 0:
        return None
    share = stats.cached_tokens / stats.input_tokens
    text = f"{share:.0%} of input tokens were cached by the provider"
    sent = max(1, stats.succeeded - stats.cache_hits)
    if stats.input_tokens / sent >= PROMPT_CACHE_MIN_TOKENS and share < PROMPT_CACHE_LOW_SHARE:
        text += (
            ". HINT: long prompts, few cached: put the shared part first (instructions, "
            "examples) and set the same prompt_cache_key on requests that share it"
        )
    return text


def operating_rows(
    stats: RunStats,
    *,
    spent_usd: float | None,
    max_cost_usd: float | None,
    cache_problem: str | None,
) -> list[tuple[str, str]]:
    """The summary rows of issue 14's features, only for what happened in the run."""
    rows: list[tuple[str, str]] = []
    if max_cost_usd is not None:
        rows.append(("spend", spent_text(spent_usd, max_cost_usd)))
    if stats.cache_hits:
        rows.append(("cache", f"{stats.cache_hits:,} answered from the response cache, not sent"))
    if cache_problem is not None:
        rows.append(("cache", cache_problem))
    prompt_cache = prompt_cache_hint(stats)
    if prompt_cache is not None:
        rows.append(("prompt cache", prompt_cache))
    if stats.circuit_opens:
        times = "time" if stats.circuit_opens == 1 else "times"
        rows.append(
            (
                "outages",
                f"the circuit breaker opened {stats.circuit_opens:,} {times}: the run paused, "
                "and attempts that failed during an outage did not count against max_attempts",
            )
        )
    return rows
