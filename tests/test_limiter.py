"""RateGovernor in virtual time: timers fire instantly, so no test waits for real seconds."""

import asyncio
import itertools

import pytest

from _virtual_time import run
from ratelane._http.wire import RateLimitHeaders, read_rate_limit_headers
from ratelane._limits.governor import RateGovernor


async def _admission_times(governor: RateGovernor, count: int, tokens: int = 0) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await governor.admit(tokens)
        times.append(loop.time())

    await asyncio.gather(*(one() for _ in range(count)))
    return times


def test_ceiling_rate_is_obeyed_with_a_small_burst() -> None:
    async def scenario() -> None:
        governor = RateGovernor(rpm=600, tpm=10**9, headroom=1.0, burst_s=0.5)
        times = await _admission_times(governor, 50)
        # 10 per second with a burst of 5: the 50th admission lands at about 4.5 s.
        assert sum(1 for t in times if t == 0.0) == 5
        assert times[-1] == pytest.approx(4.5, abs=0.11)
        gaps = [b - a for a, b in itertools.pairwise(times[5:])]
        assert min(gaps) >= 0.099

    run(scenario())


def test_first_request_probes_alone_until_an_answer() -> None:
    async def scenario() -> None:
        governor = RateGovernor()
        await governor.admit(10)  # the probe
        second = asyncio.ensure_future(governor.admit(10))
        await asyncio.sleep(0)
        assert not second.done()
        governor.observe(RateLimitHeaders(limit_requests=120, limit_tokens=1_000_000))
        await second
        assert governor.learned_rpm == 120
        assert governor.requests_per_minute == pytest.approx(120 * 0.985)

    run(scenario())


def test_learned_limits_are_capped_by_ceilings_and_follow_changes() -> None:
    async def scenario() -> None:
        governor = RateGovernor(rpm=100)
        governor.observe(RateLimitHeaders(limit_requests=500, limit_tokens=30_000))
        assert governor.requests_per_minute == pytest.approx(100 * 0.985)
        assert governor.token_limit == 30_000
        governor.observe(RateLimitHeaders(limit_requests=50, limit_tokens=20_000))
        assert governor.requests_per_minute == pytest.approx(50 * 0.985)
        assert governor.token_limit == 20_000

    run(scenario())


def test_cool_down_is_shared_and_cuts_the_rate() -> None:
    async def scenario() -> None:
        governor = RateGovernor(rpm=6000, tpm=10**9, headroom=1.0)
        assert governor.cool_down(2.0) is True
        assert governor.cool_down(1.0) is False  # an overlapping 429 does not stack
        assert governor.cooldowns == 1
        times = await _admission_times(governor, 20)
        assert min(times) >= 2.0
        assert governor.requests_per_minute is not None
        assert governor.requests_per_minute < 6000

    run(scenario())


def test_remaining_zero_pauses_until_one_request_refills() -> None:
    async def scenario() -> None:
        governor = RateGovernor(rpm=60, tpm=10**9, headroom=1.0)
        governor.observe(
            RateLimitHeaders(limit_requests=60, remaining_requests=0, reset_requests="30s")
        )
        assert governor.cooling_down
        times = await _admission_times(governor, 1)
        assert times[0] == pytest.approx(1.0)

    run(scenario())


def test_token_charges_larger_than_the_bucket_still_pass() -> None:
    async def scenario() -> None:
        governor = RateGovernor(rpm=10**6, tpm=60_000, headroom=1.0, burst_s=0.5)
        # Bucket holds 500 tokens, refills 1000/s: a 3000-token request takes ~2.5 s.
        times = await _admission_times(governor, 1, tokens=3000)
        assert times[0] == pytest.approx(2.5, abs=0.05)

    run(scenario())


def test_stale_answers_cannot_raise_a_limit_just_lowered() -> None:
    async def scenario() -> None:
        governor = RateGovernor()
        governor.observe(RateLimitHeaders(limit_requests=6000))
        sent_before_cut = await governor.admit(0)
        await asyncio.sleep(1)
        governor.observe(RateLimitHeaders(limit_requests=3000), sent_at=await governor.admit(0))
        # An answer to a request admitted before the cut still says 6000: ignored.
        governor.observe(RateLimitHeaders(limit_requests=6000), sent_at=sent_before_cut)
        assert governor.learned_rpm == 3000
        await asyncio.sleep(1)
        governor.observe(RateLimitHeaders(limit_requests=6000), sent_at=await governor.admit(0))
        assert governor.learned_rpm == 6000

    run(scenario())


def test_a_growing_bucket_keeps_its_fill_fraction() -> None:
    async def scenario() -> None:
        governor = RateGovernor(headroom=1.0, burst_s=1.0)
        governor.observe(RateLimitHeaders(limit_requests=600, limit_tokens=10**9))
        start = asyncio.get_running_loop().time()
        await _admission_times(governor, 10)  # the bucket of 10 is now full
        governor.observe(RateLimitHeaders(limit_requests=6000, limit_tokens=10**9))
        times = await _admission_times(governor, 100)
        # Capacity grew tenfold, but the full bucket stayed full: no burst of 90.
        assert sum(1 for t in times if t - start < 1e-3) <= 1
        assert max(times) - start == pytest.approx(1.0, abs=0.05)

    run(scenario())


def test_429s_right_after_a_lowered_limit_do_not_cut_the_rate() -> None:
    async def scenario() -> None:
        governor = RateGovernor(headroom=1.0)
        governor.observe(RateLimitHeaders(limit_requests=6000, limit_tokens=10**9))
        governor.observe(RateLimitHeaders(limit_requests=3000, limit_tokens=10**9))
        for _ in range(5):
            governor.cool_down(0.1)
            await asyncio.sleep(0.2)
        assert governor.requests_per_minute == pytest.approx(3000)
        await asyncio.sleep(5)
        governor.cool_down(0.1)  # a 429 while compliant: cut once...
        governor.cool_down(0.1)
        await asyncio.sleep(0.2)
        governor.cool_down(0.1)  # ...not again for stragglers
        assert governor.requests_per_minute == pytest.approx(3000 * 0.8, rel=0.02)

    run(scenario())


def test_a_per_key_gateway_limit_is_learned_and_the_smallest_binds() -> None:
    async def scenario() -> None:
        governor = RateGovernor(headroom=1.0)
        # LiteLLM: a model limit in OpenAI's names and a smaller per-key one.
        headers = read_rate_limit_headers(
            {
                "x-ratelimit-limit-requests": "1000",
                "x-ratelimit-limit-tokens": "1000000",
                "x-ratelimit-api_key-limit-requests": "300",
                "x-ratelimit-api_key-remaining-requests": "299",
                "x-litellm-key-tpm-limit": "50000",
            }
        )
        governor.observe(headers)
        assert governor.learned_rpm == 300
        assert governor.token_limit == 50_000
        times = await _admission_times(governor, 10)
        # 5/s with a bucket of 2.5: paced from the first answer, no burst of 256.
        assert times[-1] == pytest.approx(1.5, abs=0.11)

    run(scenario())


def test_the_discovery_warning_says_what_is_missing_and_how_to_fix_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        governor = RateGovernor()
        # A token limit alone is announced: the request limit is what is missing.
        sent_at = await governor.admit(0)
        governor.observe(RateLimitHeaders(limit_tokens=100_000), sent_at=sent_at)
        governor.cool_down(0.1)
        assert governor.requests_per_minute == pytest.approx(60 * 0.985)

    with caplog.at_level("WARNING", logger="ratelane"):
        run(scenario())
    message = caplog.records[0].getMessage()
    assert "announces no request limit" in message
    assert "x-ratelimit-*-limit-requests" in message
    assert "HINT: pass rpm=" in message
