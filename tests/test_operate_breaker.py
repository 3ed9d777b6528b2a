"""The circuit breaker wired into runs: an outage pauses the run instead of failing lines.

Against the fake server over real sockets: every answer is a 503 until the
outage ends (``set_faults``), then the service is healthy again. With the
breaker, the circuit opens, probes, closes, and no line fails; without it,
lines exhaust their attempts during the outage. Pauses are compressed
(``BreakerPolicy(pause_s=0.05, ...)``) so the test takes well under a second.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import ratelane
from ratelane import BreakerPolicy, RetryPolicy
from ratelane.testing import FakeOpenAI, Faults

MODEL = "gpt-4.1-mini"
LINES = 120
OUTAGE_S = 0.4
RETRY = RetryPolicy(max_attempts=3, initial_wait_s=0.01, max_wait_s=0.04)
SERVER_ERRORS = Faults(error_503=1.0)
FAST_BREAKER = BreakerPolicy(min_failures=5, window_s=1.0, pause_s=0.05, max_pause_s=0.2)


async def run_through_outage(
    breaker: BreakerPolicy | bool, outage: Faults = SERVER_ERRORS
) -> ratelane.Results:
    async with FakeOpenAI(rpm=None, tpm=None, faults=outage, seed=3) as server:
        asyncio.get_running_loop().call_later(OUTAGE_S, server.set_faults, Faults())
        return await ratelane.arun_many(
            [f"line {n}" for n in range(LINES)],
            model=MODEL,
            api_key=server.api_key,
            base_url=server.base_url,
            max_concurrency=8,
            retry=RETRY,
            breaker=breaker,
            remember_limits=False,
        )


@pytest.mark.parametrize("outage", [SERVER_ERRORS, Faults(reset=1.0)], ids=["503", "reset"])
async def test_an_outage_opens_the_circuit_probes_closes_and_no_line_fails(
    caplog: pytest.LogCaptureFixture, outage: Faults
) -> None:
    caplog.set_level(logging.INFO, logger="ratelane")
    results = await run_through_outage(FAST_BREAKER, outage)
    assert all(result.ok for result in results)
    stats = results.stats
    assert stats.failed == 0
    assert stats.circuit_opens >= 1
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("circuit open") for message in messages)
    assert any(message.startswith("circuit half-open") for message in messages)
    assert any(message.startswith("circuit closed") for message in messages)
    # Bounded: the attempts of the outage are those in flight when it opened and one
    # probe per pause, however long it lasts, never a line's whole retry budget each.
    per_line = stats.attempts / LINES
    assert max(result.attempts for result in results) <= RETRY.max_attempts + stats.circuit_opens
    assert per_line < 1.6


async def test_without_the_breaker_the_same_outage_fails_lines() -> None:
    results = await run_through_outage(False)
    stats = results.stats
    assert stats.failed > 0
    assert stats.failed_transient == stats.failed  # 503s: transient, not the lines' fault
    assert stats.circuit_opens == 0
