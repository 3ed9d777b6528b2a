"""The engine on virtual time: rate limits, cool-downs, runs and gateway answers in milliseconds.

A MockTransport (tests/_virtual_time.py) answers on a VirtualTimeLoop, behind
the fake server's own rate limiter when asked, so pacing over many virtual
seconds is checked with exact timestamps and no wall-clock wait.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

from _virtual_time import Answer, MockTransport, run
from ratelane import FatalError, RetryPolicy
from ratelane._core.models import Request, Result, RunStats
from ratelane._engine.engine import Engine
from ratelane._engine.run import EARLY_STREAK
from ratelane._limits.governor import RateGovernor


def _engine(
    transport: MockTransport,
    *,
    rpm: float | None = None,
    tpm: float | None = None,
    policy: RetryPolicy | None = None,
) -> Engine:
    governor = RateGovernor(rpm=rpm, tpm=tpm)
    return Engine(transport, governor, policy or RetryPolicy(), rng=random.Random(0))  # type: ignore[arg-type]


def _items(count: int, **fields: Any) -> Iterator[tuple[int, Request | Result]]:
    for i in range(count):
        yield i, Request({"model": "m", "input": f"p{i}", **fields}, f"c{i}")


class Collect:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.times: list[float] = []

    async def __call__(self, result: Result) -> None:
        self.results.append(result)
        self.times.append(asyncio.get_running_loop().time())


def _ok_times(transport: MockTransport) -> list[float]:
    return [call.time_s for call in transport.calls if call.status == 200]


# -- pacing (were 4-10 s wall-clock tests) -------------------------------------------------


def test_learns_the_request_limit_and_holds_it() -> None:
    async def scenario() -> None:
        transport = MockTransport(rpm=600)  # 10 requests/s, 1 s quantum
        engine = _engine(transport)
        sink = Collect()
        stats = await engine.run(_items(45), sink, max_concurrency=256)
        assert stats.succeeded == 45
        assert engine.governor.learned_rpm == 600
        assert transport.statuses.count(429) <= 1
        # 45 requests at ~9.85/s after a half-second burst: about 4 s.
        assert 3.5 <= max(sink.times) <= 5.5

    run(scenario())


def test_adapts_when_the_server_lowers_its_limit_mid_run() -> None:
    async def scenario() -> None:
        transport = MockTransport(rpm=2400)  # 40/s, then 10/s
        engine = _engine(transport)
        changed_at: list[float] = []

        async def sink(result: Result) -> None:
            if len(changed_at) == 0 and result.index >= 0 and transport.limiter is not None:
                done = sum(1 for call in transport.calls if call.status == 200)
                if done >= 30:
                    transport.limiter.set_limits(rpm=600, tpm=None)
                    changed_at.append(asyncio.get_running_loop().time())

        await engine.run(_items(70), sink, max_concurrency=256)
        finished = asyncio.get_running_loop().time()
        assert engine.governor.learned_rpm == 600
        assert transport.statuses.count(429) <= 3
        # About 40 requests at 10/s once adapted (never at 40/s, which would be 1 s).
        assert finished - changed_at[0] >= 3.0

    run(scenario())


def test_a_429_pauses_everyone_once_instead_of_a_stampede() -> None:
    async def scenario() -> None:
        # The client's ceiling is far above the server's: the first burst hits 429s,
        # which must cause one shared pause then the learned rate, not a retry storm.
        transport = MockTransport(rpm=120)  # 2/s, bucket of 2
        engine = _engine(transport, rpm=6000, tpm=10**9)
        stats = await engine.run(_items(14), Collect(), max_concurrency=10)
        assert stats.succeeded == 14
        calls = transport.calls
        first_429 = min(c.time_s for c in calls if c.status == 429)
        burst = [c for c in calls if c.time_s - first_429 < 0.2]
        later = [c for c in calls if c.time_s - first_429 >= 0.2]
        assert len(burst) <= 10
        assert sum(1 for c in later if c.status == 429) <= 2
        assert stats.cooldowns <= 3 and stats.rate_limited >= 1
        gaps = [b.time_s - a.time_s for a, b in itertools.pairwise(later)]
        assert min(gaps, default=1.0) >= 0.3

    run(scenario())


def test_retry_after_from_the_server_is_honoured_by_the_cooldown() -> None:
    async def scenario() -> None:
        transport = MockTransport(rpm=60)  # one request per second
        engine = _engine(transport, rpm=6000, tpm=10**9)
        stats = await engine.run(_items(3), Collect(), max_concurrency=3)
        assert stats.succeeded == 3
        admitted = _ok_times(transport)
        assert all(b - a >= 0.8 for a, b in itertools.pairwise(admitted))

    run(scenario())


def test_a_server_without_limit_headers_gets_its_limit_discovered_from_429s() -> None:
    async def scenario() -> None:
        transport = MockTransport(rpm=600, rate_limit_headers=False)
        engine = _engine(transport)
        stats = await engine.run(_items(100), Collect(), max_concurrency=32)
        assert stats.succeeded == 100
        pace = engine.governor.requests_per_minute
        assert pace is not None and 300 <= pace <= 700
        assert transport.statuses.count(429) <= 80
        assert asyncio.get_running_loop().time() <= 25

    run(scenario())


# -- runs --------------------------------------------------------------------------------


def test_two_runs_at_once_share_the_governor_and_keep_their_own_stats() -> None:
    async def scenario() -> None:
        transport = MockTransport(rpm=1200)
        engine = _engine(transport)
        first, second = engine.new_run(max_concurrency=8), engine.new_run(max_concurrency=8)
        a, b = await asyncio.gather(
            first.drive(_items(30), Collect()), second.drive(_items(12), Collect())
        )
        assert (a.succeeded, b.succeeded) == (30, 12)
        assert (a.attempts, b.attempts) == (30, 12)
        assert a is first.stats and b is second.stats and a is not b
        # One budget for both: 42 requests at 20/s take about 2 s, not 1.5 s each.
        assert asyncio.get_running_loop().time() >= 1.5

    run(scenario())


def test_with_no_success_yet_a_handful_of_identical_errors_stop_the_run() -> None:
    async def scenario() -> None:
        def unknown_model(path: str, body: dict[str, Any], n: int) -> Answer:
            error = {"message": "litellm.BadRequestError: Invalid model name", "code": "400"}
            return Answer(400, {"error": error})

        transport = MockTransport(unknown_model)
        engine = _engine(transport, rpm=60_000, tpm=10**9)
        run_ = engine.new_run(max_concurrency=4)
        with pytest.raises(FatalError) as caught:
            await run_.drive(_items(1000), Collect())
        assert caught.value.reason == "error_streak"
        assert run_.fatal is not None and "Invalid model name" in run_.fatal[1]
        assert len(transport.calls) <= EARLY_STREAK + 4
        assert run_.stats.failed == len(transport.calls) and run_.in_flight == 0

    run(scenario())


def test_after_a_success_the_full_streak_applies() -> None:
    async def scenario() -> None:
        def first_ok(path: str, body: dict[str, Any], n: int) -> Answer | None:
            return None if n == 1 else Answer(404, {"error": {"code": "model_not_found"}})

        transport = MockTransport(first_ok)
        engine = _engine(transport, rpm=60_000, tpm=10**9, policy=RetryPolicy(fatal_streak=20))
        with pytest.raises(FatalError):
            await engine.run(_items(100), Collect(), max_concurrency=1)
        assert len(transport.calls) == 1 + 20

    run(scenario())


def test_stop_admits_nothing_new_and_lets_in_flight_requests_finish() -> None:
    async def scenario() -> None:
        transport = MockTransport(latency_s=1.0)
        engine = _engine(transport, rpm=60_000, tpm=10**9)
        run_ = engine.new_run(max_concurrency=4)
        sink = Collect()

        async def stop_soon() -> None:
            await asyncio.sleep(2.5)
            assert run_.in_flight == 4
            run_.stop()

        stats, _ = await asyncio.gather(run_.drive(_items(1000), sink), stop_soon())
        assert run_.stopping and run_.fatal is None and run_.in_flight == 0
        assert stats.succeeded == len(transport.calls) == len(sink.results) < 30

    run(scenario())


def test_engine_execute_is_one_request_in_a_run_of_its_own() -> None:
    async def scenario() -> None:
        engine = _engine(MockTransport(), rpm=60_000, tpm=10**9)
        result = await engine.execute(7, Request({"model": "m", "input": "x"}))
        assert result.ok and result.index == 7 and result.custom_id == "request-7"
        assert isinstance(engine.new_run(max_concurrency=1).stats, RunStats)

    run(scenario())


# -- gateway answers (issue 10) ------------------------------------------------------------


def test_litellm_unsupported_params_are_dropped_once_and_remembered() -> None:
    async def scenario() -> None:
        def litellm(path: str, body: dict[str, Any], n: int) -> Answer | None:
            if "temperature" in body:
                message = (
                    "litellm.UnsupportedParamsError: gpt-5-mini doesn't support "
                    f"temperature={body['temperature']}. Only temperature=1 is supported."
                )
                return Answer(400, {"error": {"message": message, "code": "400", "param": None}})
            return None

        transport = MockTransport(litellm)
        engine = _engine(transport, rpm=60_000, tpm=10**9)
        sink = Collect()
        stats = await engine.run(_items(20, temperature=0.2), sink, max_concurrency=2)
        assert stats.succeeded == 20
        assert all(r.dropped_params == ("temperature",) for r in sink.results)
        assert transport.statuses.count(400) <= 2  # only those in flight before the first

    run(scenario())


def test_a_plain_text_error_body_is_kept_in_the_error() -> None:
    async def scenario() -> None:
        def plain(path: str, body: dict[str, Any], n: int) -> Answer:
            return Answer(500, b"Internal Server Error: upstream said no", latency_s=0.0)

        engine = _engine(
            MockTransport(plain), rpm=60_000, tpm=10**9, policy=RetryPolicy(max_attempts=2)
        )
        result = await engine.execute(0, Request({"model": "m", "input": "x"}))
        assert not result.ok and result.attempts == 2 and result.status_code == 500
        assert result.error is not None and "upstream said no" in result.error.message

    run(scenario())


def test_request_id_falls_back_to_the_proxy_header() -> None:
    async def scenario() -> None:
        def litellm_ids(path: str, body: dict[str, Any], n: int) -> Answer:
            from _virtual_time import ok_body

            return Answer(200, ok_body(body), {"x-request-id": "", "x-litellm-call-id": "c-1"})

        engine = _engine(MockTransport(litellm_ids), rpm=60_000, tpm=10**9)
        result = await engine.execute(0, Request({"model": "m", "input": "x"}))
        assert result.ok
        assert (result.request_id, result.request_id_header) == ("c-1", "x-litellm-call-id")

    run(scenario())


def test_a_gateway_401_with_a_numeric_code_stops_as_an_invalid_key() -> None:
    async def scenario() -> None:
        def litellm_401(path: str, body: dict[str, Any], n: int) -> Answer:
            error = {"message": "Authentication Error, Invalid proxy server token", "code": "401"}
            return Answer(401, {"error": {**error, "type": "auth_error"}})

        transport = MockTransport(litellm_401)
        engine = _engine(transport)
        with pytest.raises(FatalError) as caught:
            await engine.run(_items(100), Collect(), max_concurrency=8)
        assert caught.value.reason == "invalid_api_key"
        assert len(transport.calls) == 1  # the first request probes alone

    run(scenario())
