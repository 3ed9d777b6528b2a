"""Server-side rate limits: quantised admission, the six headers, 429 bodies, fake clock."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelane._core.durations import parse_duration
from ratelane._core.tokens import estimate_request_tokens
from ratelane.testing import FakeOpenAI
from ratelane.testing._ratelimit import RateLimiter

KEY = "sk-test"
BODY = {"model": "gpt-4o", "input": "hello", "max_output_tokens": 100}
BODY_TOKENS = estimate_request_tokens(BODY)  # 2 input + 100 output


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


Post = Callable[..., Any]


def make_server(clock: FakeClock, **options: Any) -> AbstractAsyncContextManager[FakeOpenAI]:
    return FakeOpenAI(api_key=KEY, clock=clock, **options)


async def post(
    session: aiohttp.ClientSession, server: FakeOpenAI, body: dict[str, Any] = BODY
) -> tuple[int, Any, Any]:
    async with session.post(
        server.base_url + "/responses", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        return response.status, orjson.loads(await response.read()), response.headers


# -- over HTTP ---------------------------------------------------------------------


async def test_rpm_60_admits_one_per_second(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=60) as server:
        assert (await post(session, server))[0] == 200
        for _ in range(3):
            assert (await post(session, server))[0] == 429
        clock.advance(0.999)
        assert (await post(session, server))[0] == 429
        clock.advance(0.001)
        assert (await post(session, server))[0] == 200
        assert (await post(session, server))[0] == 429


async def test_six_headers_in_go_duration_format(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=600, tpm=6000) as server:
        status, _, headers = await post(session, server)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert headers["x-ratelimit-remaining-requests"] == "599"
    assert headers["x-ratelimit-reset-requests"] == "100ms"  # one request at 10/s
    assert parse_duration(headers["x-ratelimit-reset-requests"]) == pytest.approx(0.1)
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert headers["x-ratelimit-remaining-tokens"] == str(6000 - BODY_TOKENS)
    # 102 tokens refill at 100 per second.
    assert headers["x-ratelimit-reset-tokens"] == "1.02s"
    assert parse_duration(headers["x-ratelimit-reset-tokens"]) == pytest.approx(1.02)


async def test_reset_headers_reach_whole_minutes(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=3, tpm=BODY_TOKENS) as server:
        status, _, headers = await post(session, server)
        assert status == 200
        # The whole token limit was spent: a minute to refill, in Go's "1m0s" form.
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        assert headers["x-ratelimit-reset-tokens"] == "1m0s"
        assert headers["x-ratelimit-reset-requests"] == "20s"
        clock.advance(0.5)
        for _ in range(3):
            status, body, headers = await post(session, server)
            assert status == 429
    # The token wait is the longer one, so the message names tokens.
    assert (
        "on tokens per min (TPM): Limit 102, Used 102, Requested 102. "
        in (body["error"]["message"])
    )
    assert "Please try again in 59.5s." in body["error"]["message"]
    # Refusals count toward the minute of requests, up to the limit.
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert parse_duration(headers["x-ratelimit-reset-tokens"]) == pytest.approx(59.5)
    assert headers["x-ratelimit-reset-tokens"] == "59.5s"


async def test_requests_429_body_and_retry_headers(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=600) as server:
        for _ in range(10):  # the 1 s quantum of 600 RPM is 10 requests
            assert (await post(session, server))[0] == 200
        clock.advance(0.03)
        status, body, headers = await post(session, server)
    assert status == 429
    assert body == {
        "error": {
            "message": "Rate limit reached for gpt-4o in organization org-fake on requests per "
            "min (RPM): Limit 600, Used 11, Requested 1. Please try again in 70ms. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert headers["retry-after-ms"] == "70"
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "589"


async def test_waiting_retry_after_ms_is_exactly_enough(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=600, tpm=6000) as server:
        await post(session, server)
        status, _, headers = await post(session, server, {**BODY, "max_output_tokens": 5000})
        assert status == 429
        wait_ms = int(headers["retry-after-ms"])
        assert headers["retry-after"] == str(math.ceil(wait_ms / 1000))
        clock.advance((wait_ms - 1) / 1000)
        assert (await post(session, server, {**BODY, "max_output_tokens": 5000}))[0] == 429
        clock.advance(0.001)
        assert (await post(session, server, {**BODY, "max_output_tokens": 5000}))[0] == 200


async def test_tokens_429_body(clock: FakeClock, session: aiohttp.ClientSession) -> None:
    async with make_server(clock, tpm=12_000) as server:  # quantum: 200 tokens
        assert (await post(session, server))[0] == 200  # 102
        status, body, headers = await post(session, server)  # 102 more does not fit
    assert status == 429
    error = body["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    # Needs 4 more tokens at 200/s: 20 ms.
    assert error["message"] == (
        "Rate limit reached for gpt-4o in organization org-fake on tokens per min (TPM): "
        f"Limit 12000, Used {BODY_TOKENS}, Requested {BODY_TOKENS}. Please try again in 20ms. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    assert headers["retry-after-ms"] == "20"


async def test_request_larger_than_tpm_is_refused_for_good(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, tpm=100) as server:
        for _ in range(2):
            status, body, headers = await post(session, server)
            clock.advance(3600)
            assert status == 429
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert body["error"]["type"] == "tokens"
            assert body["error"]["message"].startswith(
                "Request too large for gpt-4o in organization org-fake on tokens per min (TPM): "
                f"Limit 100, Requested {BODY_TOKENS}."
            )
            assert "retry-after" not in headers
            assert "retry-after-ms" not in headers


async def test_request_bigger_than_the_quantum_gets_in_when_the_bucket_is_full(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    big = {**BODY, "max_output_tokens": 1000}  # 1002 tokens, quantum is 100
    async with make_server(clock, tpm=6000) as server:
        assert (await post(session, server, big))[0] == 200
        status, _, headers = await post(session, server, big)
        assert status == 429
        assert headers["retry-after-ms"] == "10020"  # all 1002 tokens must drain first
        clock.advance(10.02)
        assert (await post(session, server, big))[0] == 200


async def test_failed_requests_count_toward_rpm_but_do_not_lock_out(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=60) as server:
        assert (await post(session, server))[0] == 200
        for expected_used in (2, 3, 4):
            status, body, headers = await post(session, server)
            assert status == 429
            assert f"Used {expected_used}," in body["error"]["message"]
            assert headers["retry-after-ms"] == "1000"  # refusals never extend the wait
        assert headers["x-ratelimit-remaining-requests"] == "56"
        clock.advance(1.0)
        assert (await post(session, server))[0] == 200


async def test_set_limits_at_runtime(clock: FakeClock, session: aiohttp.ClientSession) -> None:
    async with make_server(clock, rpm=60) as server:
        assert (await post(session, server))[0] == 200
        assert (await post(session, server))[0] == 429
        server.set_limits(rpm=None)
        assert server.limits == (None, None)
        for _ in range(5):
            status, _, headers = await post(session, server)
            assert status == 200
            assert "x-ratelimit-limit-requests" not in headers
        server.set_limits(rpm=6000, tpm=1_000_000)
        status, _, headers = await post(session, server)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "6000"
        assert headers["x-ratelimit-limit-tokens"] == "1000000"
        server.set_limits(tpm=None)  # rpm kept
        assert list(server.limits) == [6000, None]


async def test_set_limits_rejects_nonsense() -> None:
    server = FakeOpenAI()
    with pytest.raises(ValueError, match="rpm must be"):
        server.set_limits(rpm=0)
    with pytest.raises(ValueError, match="tpm must be"):
        server.set_limits(tpm=float("nan"))


async def test_ledger_records_the_admission_charge(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with make_server(clock, rpm=60) as server:
        await post(session, server)
        await post(session, server)
        admitted, refused = server.ledger.entries
    assert (admitted.status, admitted.tokens) == (200, BODY_TOKENS)
    assert (refused.status, refused.tokens, refused.error_code) == (429, 0, "rate_limit_exceeded")


# -- the limiter alone --------------------------------------------------------------


def test_quantum_is_enforced_below_the_per_minute_limit(clock: FakeClock) -> None:
    limiter = RateLimiter(rpm=60_000, tpm=None, quantum_s=1.0, clock=clock)
    results = [limiter.admit(1) for _ in range(1001)]
    assert all(result.admitted for result in results[:1000])
    refused = results[1000]
    assert refused.kind == "requests"
    # The per-minute view still shows most of the minute's budget left.
    assert refused.headers["x-ratelimit-remaining-requests"] == str(60_000 - 1001)
    assert refused.wait_s == pytest.approx(0.001)


def test_shorter_quantum_means_smaller_bursts(clock: FakeClock) -> None:
    limiter = RateLimiter(rpm=6000, tpm=None, quantum_s=0.1, clock=clock)
    assert sum(limiter.admit(1).admitted for _ in range(50)) == 10


def test_rpm_below_60_still_allows_one_request(clock: FakeClock) -> None:
    limiter = RateLimiter(rpm=3, tpm=None, quantum_s=1.0, clock=clock)
    assert limiter.admit(1).admitted
    refused = limiter.admit(1)
    assert not refused.admitted
    assert refused.wait_s == pytest.approx(20.0)


def test_hammering_still_gets_the_full_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(rpm=600, tpm=60_000, quantum_s=1.0, clock=clock)
    admitted = 0
    for _ in range(10_000):  # a request every millisecond for 10 s
        admitted += limiter.admit(50).admitted
        clock.advance(0.001)
    # 10 requests of burst + 10/s for 10 s, and tokens (1000 burst + 1000/s) allow as many.
    assert admitted in (109, 110, 111)


def test_unlimited_limiter_has_no_headers(clock: FakeClock) -> None:
    limiter = RateLimiter(rpm=None, tpm=None, quantum_s=1.0, clock=clock)
    admission = limiter.admit(10**9)
    assert admission.admitted
    assert admission.headers == {}


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(1, 5000),
    tpm=st.integers(100, 200_000),
    quantum_s=st.sampled_from([0.1, 0.5, 1.0, 2.0]),
    traffic=st.lists(
        st.tuples(st.floats(0.0, 2.0), st.integers(1, 100_000)), min_size=1, max_size=120
    ),
)
def test_admitted_traffic_never_beats_the_limits(
    rpm: int, tpm: int, quantum_s: float, traffic: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=rpm, tpm=tpm, quantum_s=quantum_s, clock=clock)
    admitted: list[tuple[float, int]] = []
    for gap, tokens in traffic:
        clock.advance(gap)
        result = limiter.admit(tokens)
        if result.admitted:
            admitted.append((clock.now, tokens))
        elif result.kind != "too_large":
            assert result.wait_s > 0
    # Over any window [a, b]: at most a burst plus the refill of the window.
    request_burst = max(rpm * quantum_s / 60, 1.0)
    token_burst = tpm * quantum_s / 60
    for i, (start, _) in enumerate(admitted):
        for j in range(i, len(admitted)):
            end = admitted[j][0]
            window = admitted[i : j + 1]
            assert len(window) <= request_burst + rpm / 60 * (end - start) + 1e-6
            largest = max(tokens for _, tokens in window)
            assert sum(t for _, t in window) <= (
                max(token_burst, largest) + tpm / 60 * (end - start) + 1e-6
            )


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(1, 2000),
    tpm=st.integers(1000, 100_000),
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=30),
)
def test_sleeping_the_advertised_wait_is_enough(rpm: int, tpm: int, sizes: list[int]) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=rpm, tpm=tpm, quantum_s=1.0, clock=clock)
    for tokens in sizes:
        result = limiter.admit(tokens)
        if not result.admitted:
            clock.advance(result.wait_s)
            assert limiter.admit(tokens).admitted


async def test_limits_without_headers_like_many_compatible_servers() -> None:
    async with (
        FakeOpenAI(rpm=60, rate_limit_headers=False) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.api_key}"}) as session,
    ):
        statuses = []
        for _ in range(2):
            async with session.post(
                f"{server.base_url}/responses", json={"model": "m", "input": "x"}
            ) as response:
                statuses.append(response.status)
                assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]
                assert response.headers["x-request-id"].startswith("req_")
        assert statuses == [200, 429]
        assert "retry-after-ms" in response.headers
