"""The circuit breaker's state in progress text (issue 14), on virtual time."""

from __future__ import annotations

from _virtual_time import run
from ratelane import BreakerPolicy
from ratelane._engine.breaker import CircuitBreaker
from ratelane._engine.circuit import circuit_text
from ratelane._files.progress import progress_postfix


def test_the_bar_says_when_the_circuit_is_open_and_when_it_probes() -> None:
    async def scenario() -> None:
        breaker = CircuitBreaker(BreakerPolicy(min_failures=2, pause_s=12.0, max_pause_s=60.0))
        assert circuit_text(breaker) is None and circuit_text(None) is None
        breaker.record(failed=True)
        breaker.record(failed=True)
        assert circuit_text(breaker) == "open, probing in 12 s"
        assert await breaker.admit()  # after the pause (virtual time): the probe
        assert circuit_text(breaker) == "half-open, probing"
        text = progress_postfix(
            succeeded=5,
            failed=0,
            requests_per_minute=None,
            tokens_per_minute=None,
            cooldowns=0,
            cooling_down=False,
            circuit=circuit_text(breaker),
        )
        assert text.endswith("(circuit half-open, probing)")
        breaker.record(failed=False, probe=True)
        assert circuit_text(breaker) is None

    run(scenario())
