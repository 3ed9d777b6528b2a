"""The governor's own leaky bucket, on virtual time: FIFO, big amounts, retuning."""

from __future__ import annotations

import asyncio

import pytest

from _virtual_time import run
from ratelane._limits.bucket import Bucket


async def _times(bucket: Bucket, amounts: list[float]) -> list[float]:
    """Start one task per amount in this order; return each one's admission time."""
    loop = asyncio.get_running_loop()
    times = [0.0] * len(amounts)

    async def one(index: int, amount: float) -> None:
        if not bucket.take(amount):
            await bucket.wait(amount)
        times[index] = loop.time()

    tasks = [asyncio.ensure_future(one(i, a)) for i, a in enumerate(amounts)]
    await asyncio.gather(*tasks)
    return times


def test_rate_and_burst_are_exact() -> None:
    async def scenario() -> list[float]:
        return await _times(Bucket(10.0, 5.0), [1] * 15)

    times = run(scenario())
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([0.1 * k for k in range(1, 11)], abs=1e-6)


def test_waiters_pass_in_arrival_order_even_when_a_small_one_would_fit() -> None:
    async def scenario() -> list[float]:
        bucket = Bucket(10.0, 10.0)
        assert bucket.take(10)
        # 8 arrives first and must wait 0.8 s; 1 behind it may not jump the queue.
        return await _times(bucket, [8, 1])

    big, small = run(scenario())
    assert big == pytest.approx(0.8)
    assert small >= big


def test_an_amount_beyond_the_capacity_passes_in_parts_and_holds_the_line() -> None:
    async def scenario() -> list[float]:
        # 500 capacity, 1000/s: 3000 needs the first 500 now and 2.5 s for the rest.
        return await _times(Bucket(1000.0, 500.0), [3000, 1])

    big, small = run(scenario())
    assert big == pytest.approx(2.5)
    assert small == pytest.approx(2.501)


def test_retuning_while_tasks_wait_retimes_them_and_keeps_the_fill_fraction() -> None:
    async def scenario() -> tuple[list[float], float]:
        bucket = Bucket(1.0, 2.0)
        assert bucket.take(2)  # full
        waiting = asyncio.ensure_future(_times(bucket, [1, 1]))
        await asyncio.sleep(0)
        # Ten times faster and five times bigger: still full (fraction 1), no burst.
        bucket.retune(10.0, 10.0)
        assert bucket.level == pytest.approx(10.0)
        times = await waiting
        return times, bucket.level

    times, level = run(scenario())
    assert times == pytest.approx([0.1, 0.2], abs=1e-6)
    assert level == pytest.approx(10.0)


def test_fill_and_cancel_and_repr() -> None:
    async def scenario() -> None:
        bucket = Bucket(2.0, 4.0)
        bucket.fill()
        assert not bucket.take(1)
        head = asyncio.ensure_future(bucket.wait(4))
        await asyncio.sleep(0)
        behind = asyncio.ensure_future(bucket.wait(1))
        await asyncio.sleep(0)
        assert "waiters=2" in repr(bucket)
        assert "waking_in=" in repr(bucket)
        head.cancel()  # a cancelled head must not hold the next one back
        await asyncio.sleep(0.6)
        assert behind.done()  # at 0.5 s, not at the 2 s the head needed
        assert "level=3.800/4" in repr(bucket)
        with pytest.raises(ValueError, match="positive"):
            Bucket(0.0, 1.0)

    run(scenario())


def test_fits_says_whether_take_would_succeed_and_takes_nothing() -> None:
    async def scenario() -> None:
        bucket = Bucket(10.0, 5.0)
        assert bucket.fits(5) and bucket.level == 0.0
        assert bucket.take(4)
        assert bucket.fits(1) and not bucket.fits(2)
        assert bucket.level == pytest.approx(4.0)

    run(scenario())


def test_try_admit_takes_both_shares_or_neither() -> None:
    from ratelane._http.wire import RateLimitHeaders
    from ratelane._limits.governor import RateGovernor

    async def scenario() -> None:
        governor = RateGovernor(rpm=600, tpm=6_000, headroom=1.0, burst_s=1.0)
        governor.observe(RateLimitHeaders(600, 6_000, 599, 5_999, None, None))
        requests, tokens = governor._requests, governor._tokens
        assert requests is not None and tokens is not None
        # 10 requests and 100 tokens a second, a second of each in the buckets.
        assert governor.try_admit(60) == asyncio.get_running_loop().time()
        assert requests.level == pytest.approx(1.0) and tokens.level == pytest.approx(60.0)
        assert governor.try_admit(41) is None  # the tokens do not fit: no request taken
        assert requests.level == pytest.approx(1.0) and tokens.level == pytest.approx(60.0)
        for _ in range(9):
            assert governor.try_admit(1) is not None
        assert governor.try_admit(0) is None  # the request bucket is full
        assert tokens.level == pytest.approx(69.0)
        governor.cool_down(1.0)
        await asyncio.sleep(5)  # both drained
        assert governor.try_admit(1) is not None
        governor.cool_down(1.0)
        assert governor.try_admit(1) is None  # cooling down: await admit()

    run(scenario())


def test_try_admit_waits_for_the_first_answer_when_a_limit_is_unknown() -> None:
    from ratelane._limits.governor import RateGovernor

    async def scenario() -> None:
        governor = RateGovernor()
        assert governor.try_admit(10) is None  # the probe goes through admit()
        await governor.admit(10)
        assert governor.try_admit(10) is None  # still no answer: the rest wait
        governor.observe(None)
        assert governor.try_admit(10) is not None

    run(scenario())
