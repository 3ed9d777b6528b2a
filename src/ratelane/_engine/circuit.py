"""The circuit breaker's side of an attempt: wait while the circuit is open, report the outcome.

``Run._attempt`` calls :func:`wait_for_circuit` before admission only when the
circuit is not closed (the happy path pays one attribute check), and
:func:`report` after every answer. A transient failure (5xx, timeout, reset)
that finds the circuit open, because it opened it or because it was in flight
when it opened, is *forgiven*: it is the outage's, not the line's, so it does
not count against ``RetryPolicy.max_attempts``. An outage therefore pauses
lines instead of turning them into permanent failures, and each line's
attempts stay bounded by the circuit's openings, not by the outage's length.
"""

from __future__ import annotations

from .breaker import BreakerState, CircuitBreaker
from .retry import Decision, Verdict

__all__ = ["circuit_text", "is_outage", "report"]


def is_outage(decision: Decision) -> bool:
    """What an outage looks like: no answer (connection error, reset, timeout) or a 5xx."""
    if decision.verdict is not Verdict.RETRY:
        return False
    status = decision.status
    return status is None or status >= 500


def report(breaker: CircuitBreaker, decision: Decision, *, probe: bool) -> tuple[bool, bool]:
    """Tell the breaker how an attempt went: ``(forgiven, opened)``.

    Successes and outage failures are recorded; other answers (4xx, 429) say
    nothing about the service being down, except for the probe, for which any
    answer proves the service is up again.
    """
    failed = is_outage(decision)
    if not failed and not probe and decision.verdict is not Verdict.SUCCESS:
        return False, False
    opened = breaker.opened
    breaker.record(failed=failed, probe=probe)
    return failed and breaker.state is not BreakerState.CLOSED, breaker.opened > opened


def circuit_text(breaker: CircuitBreaker | None) -> str | None:
    """For progress bars: ``open, probing in 12 s`` / ``half-open, probing``; ``None`` when
    closed (or with no breaker)."""
    if breaker is None or breaker.state is BreakerState.CLOSED:
        return None
    if breaker.state is BreakerState.HALF_OPEN:
        return "half-open, probing"
    return f"open, probing in {breaker.open_for_s:.0f} s"
