"""Discovery of an unannounced request limit, on virtual time against simulated servers.

The simulated servers enforce a limit the governor is never told: a continuously
refilling one (like OpenAI and the fake server: a one-second quantum) and a fixed
per-minute window (like LiteLLM: once the minute's budget is spent, every request
is refused until the minute turns). Workers run the engine's loop: admit, wait for
the answer, ``observe`` it, and on a 429 ``cool_down`` then retry.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from _virtual_time import run
from ratelane import Client
from ratelane._limits.discovery import Discovery, DiscoveryTuning
from ratelane._limits.governor import RateGovernor
from ratelane.testing import FakeOpenAI


@dataclass
class RefillingServer:
    """Admits when ``debt + 1 <= burst``; debt drains at ``rpm / 60`` per second."""

    rpm: float
    quantum_s: float = 1.0
    debt: float = 0.0
    updated: float = 0.0

    def accept(self, now: float) -> bool:
        self.debt = max(0.0, self.debt - (now - self.updated) * self.rpm / 60.0)
        self.updated = now
        if self.debt + 1 <= max(1.0, self.rpm * self.quantum_s / 60.0) + 1e-9:
            self.debt += 1
            return True
        return False


@dataclass
class FixedWindowServer:
    """``rpm`` requests per calendar minute; ``used`` already spent in the first one."""

    rpm: float
    used: int = 0
    minute: int = 0

    def accept(self, now: float) -> bool:
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.used = minute, 0
        if self.used < self.rpm:
            self.used += 1
            return True
        return False


@dataclass
class Trace:
    successes: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)

    def first_time_at(self, rpm: float, *, window_s: float = 5.0, after: float = 0.0) -> float:
        """The end of the first ``window_s`` (after ``after``) whose success rate is >= ``rpm``."""
        times = [t for t in self.successes if t >= after]
        need = math.ceil(rpm / 60.0 * window_s)
        for i in range(need - 1, len(times)):
            if times[i] - times[i - need + 1] <= window_s:
                return times[i]
        return math.inf

    def refused_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.refusals if start <= t < end)


async def _drive(
    governor: RateGovernor,
    accept: Callable[[float], bool],
    *,
    duration_s: float,
    workers: int = 64,
    latency_s: float = 0.2,
    retry_after_s: float | Callable[[float], float] = 0.1,
) -> Trace:
    loop = asyncio.get_running_loop()
    trace = Trace()
    end = loop.time() + duration_s

    async def worker() -> None:
        while loop.time() < end:
            sent_at = await governor.admit(0)
            if accept(loop.time()):
                await asyncio.sleep(latency_s)
                governor.observe(None, sent_at=sent_at)
                trace.successes.append(loop.time())
            else:
                await asyncio.sleep(0.01)  # 429s are answered at once
                now = loop.time()
                trace.refusals.append(now)
                governor.observe(None, sent_at=sent_at)
                pause = retry_after_s(now) if callable(retry_after_s) else retry_after_s
                governor.cool_down(pause)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return trace


@pytest.mark.parametrize("limit", [120, 600, 3000, 12000])
def test_an_unannounced_limit_is_found_within_seconds(limit: int) -> None:
    async def scenario() -> tuple[Trace, float | None]:
        governor = RateGovernor()
        trace = await _drive(governor, RefillingServer(limit).accept, duration_s=40)
        return trace, governor.requests_per_minute

    trace, pace = run(scenario())
    reached = trace.first_time_at(0.9 * limit)
    print(f"limit {limit}: 90 % reached after {reached:.1f}s, pace {pace}")
    assert reached < 12.0
    assert pace is not None
    assert 0.75 * limit <= pace <= 1.3 * limit
    # Settled: after the search, few refusals (well under one per ten successes).
    settled = sum(1 for t in trace.successes if t >= 20)
    assert trace.refused_between(20, 40) <= max(3, settled // 10)


def test_a_first_answer_429_does_not_lock_onto_the_rate_it_saw() -> None:
    # The case: the probe itself is refused (the budget was spent by someone
    # else), so the accepted rate looks like ~0; the pace must still reach the limit.
    async def scenario() -> Trace:
        server = RefillingServer(600)
        server.debt = 30.0  # three seconds of refill owed before anything is accepted
        return await _drive(RateGovernor(), server.accept, duration_s=30)

    trace = run(scenario())
    assert trace.first_time_at(540) < 12.0


def test_a_used_up_fixed_window_is_waited_out_not_learned() -> None:
    # A LiteLLM-style calendar-minute window, spent before the run starts: every
    # answer is 429 until the minute turns at t=60; then the full rate must come
    # back within seconds, not crawl up from the refusals seen meanwhile.
    async def scenario() -> tuple[Trace, RateGovernor]:
        server = FixedWindowServer(1200, used=1200)
        governor = RateGovernor()
        trace = await _drive(
            governor,
            server.accept,
            duration_s=100,
            retry_after_s=lambda now: 60.0 - now % 60.0,  # "until the minute turns"
        )
        return trace, governor

    trace, governor = run(scenario())
    assert not [t for t in trace.successes if t < 60]
    # At least 90 % of the limit in a 5 s window within 10 s of the turn.
    assert trace.first_time_at(0.9 * 1200, after=60) < 70.0
    assert governor.requests_per_minute is not None


@pytest.mark.parametrize(
    ("retry_after", "max_refused_per_minute"),
    [("turn", 3), ("1s", 30)],
    ids=["retry-when-the-minute-turns", "retry-after-1s"],
)
def test_a_fixed_window_settles_near_its_limit_not_far_above(
    retry_after: str, max_refused_per_minute: int
) -> None:
    # A LiteLLM-style 1,200/min calendar window accepts each minute's burst at any
    # speed, so the pace at a 429 says little: before rule 5 the pace stayed near
    # 29,000 rpm, with 3-17 429s a minute (180-540 with a 1 s retry-after).
    def until_turn(now: float) -> float:
        return 60.0 - now % 60.0

    async def scenario() -> tuple[Trace, float | None]:
        governor = RateGovernor()
        trace = await _drive(
            governor,
            FixedWindowServer(1200).accept,
            duration_s=240,
            retry_after_s=until_turn if retry_after == "turn" else 1.0,
        )
        return trace, governor.requests_per_minute

    trace, pace = run(scenario())
    refused = [trace.refused_between(m * 60, (m + 1) * 60) for m in range(2, 4)]
    served = [sum(1 for t in trace.successes if m * 60 <= t < (m + 1) * 60) for m in range(4)]
    print(f"pace {pace}, 429s a minute {refused}, successes a minute {served}")
    assert served == [1200] * 4  # the window is used in full every minute
    assert pace is not None
    assert 0.75 * 1200 <= pace <= 1.3 * 1200
    assert max(refused) <= max_refused_per_minute


def test_a_cut_is_capped_by_the_success_rate_over_the_history() -> None:
    tuning = DiscoveryTuning(history_s=60.0)
    discovery = Discovery(tuning)
    discovery.answered(0.0)
    assert discovery.rejected(0.0, sent_at=0.0)  # the first 429: discovery starts
    discovery.rpm = 30_000.0  # far above what the server takes
    for second in range(1, 31):  # 10 successes a second for 30 s: 600 rpm achieved
        for _ in range(10):
            discovery.answered(float(second))
    # The 429 at 0 was no success: the history starts at 1 s.
    assert discovery.achieved_rpm(30.5) is None  # under half the history: no evidence
    assert discovery.achieved_rpm(31.0) == pytest.approx(600)
    discovery.answered(31.0)
    assert discovery.rejected(31.0, sent_at=30.5)
    # Not 0.8 x 30,000: the margin times the rate the server actually took.
    assert discovery.rpm == pytest.approx(tuning.margin * 600)


def test_discovery_rules_step_by_step() -> None:
    tuning = DiscoveryTuning()
    discovery = Discovery(tuning)
    assert discovery.rpm is None  # unlimited until the first 429
    # First 429 after 3 successes in the window: 1.5/s accepted -> 81 rpm; floor 60.
    for t in (0.1, 0.2, 0.3):
        discovery.answered(t)
    discovery.answered(0.4)
    assert discovery.rejected(0.4, sent_at=0.3)
    assert discovery.rpm == pytest.approx(max(60.0, 3 / 2.0 * 60 * 0.9))
    start = discovery.rpm
    # A busy step with successes and no 429: slow start multiplies.
    discovery.admitted = 100
    discovery.answered(0.6)
    assert discovery.answered(1.0)
    assert discovery.rpm == pytest.approx(start * tuning.slow_start_factor)
    grown = discovery.rpm
    # A 429 for an attempt sent before the last cut is a straggler: nothing changes.
    discovery.answered(1.1)
    assert not discovery.rejected(1.1, sent_at=0.35)
    # A fresh 429 with successes since the cut: cut to 0.8 of the pace it was sent at.
    discovery.answered(1.2)
    assert discovery.rejected(1.2, sent_at=1.05)
    assert discovery.rpm == pytest.approx(grown * tuning.cut_factor)
    assert not discovery.slow_start
    # No success since that cut: a refusal says nothing about our rate.
    discovery.answered(1.5)
    assert not discovery.rejected(1.5, sent_at=1.3)


@pytest.mark.slow
async def test_loopback_an_unannounced_600_rpm_limit_is_reached_within_seconds() -> None:
    # Real sockets, real clock: the fake server enforces 600 rpm and announces nothing.
    # Prompts are generated until the success rate over 2 s reaches 90 % of the limit.
    window_s, target_per_s = 2.0, 0.9 * 600 / 60
    successes: list[float] = []
    reached: float | None = None
    async with FakeOpenAI(rpm=600, rate_limit_headers=False, latency=0.05) as server:
        started = time.monotonic()

        def prompts() -> Iterator[str]:
            index = 0
            while reached is None and time.monotonic() - started < 15.0:
                index += 1
                yield f"p{index}"

        async with Client(
            api_key=server.api_key, base_url=server.base_url, max_concurrency=16
        ) as client:
            async for result in client.iter_results(prompts(), model="m"):
                now = time.monotonic() - started
                if result.ok:
                    successes.append(now)
                    recent = sum(1 for t in successes if t > now - window_s)
                    if reached is None and now >= window_s and recent >= target_per_s * window_s:
                        reached = now
    print(f"90 % of an unannounced 600 rpm reached after {reached}s")
    assert reached is not None
    assert reached < 15.0
