"""The shared budget inside runs (issue 13): ``Client(limiter=RedisLimiter(url))`` against a
real Redis (``_redis_server.py``) and the fake server. Two Clients with their own limiter
are two processes as far as Redis can tell (own connections, own registration).

What is checked: a 429 seen by one pauses the other; token charges corrected from the
reported usage; Redis killed mid-run and restarted (1/N fallback with a log line,
re-join, every result kept); Redis unreachable at the start (nothing sent).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

import ratelane
from _rate_windows import busiest_window
from _redis_server import RedisServer, redis_server
from ratelane import Client, ConfigurationError, RedisLimiter
from ratelane._limits.shared import SharedGovernor
from ratelane.testing import FakeOpenAI, Latency

__all__ = ["redis_server"]

MODEL = "gpt-4.1-mini"
TEAM_KEY = "sk-team-key-shared-by-every-process"


def _limiter(url: str, **options: float) -> RedisLimiter:
    # The same budget whichever server each client talks to: the identity is named here.
    return RedisLimiter(url, api_key=TEAM_KEY, model=MODEL, **options)


def _prompts(count: int, prefix: str) -> list[dict[str, object]]:
    return [
        {"input": f"{prefix} {index}", "metadata": {"custom_id": f"{prefix}-{index}"}}
        for index in range(count)
    ]


async def test_a_429_seen_by_one_process_pauses_the_others(redis_server: RedisServer) -> None:
    # A talks to a server that refuses its second request (2 requests per second, limits
    # not announced); B to one with no limit, paced by its own ceiling. They share one
    # budget, so A's 429 must pause B, which itself never sees a 429.
    async with (
        FakeOpenAI(rpm=120, tpm=None, rate_limit_headers=False) as strict,
        FakeOpenAI(rpm=None, tpm=None, latency=Latency(0.01)) as open_server,
    ):
        common = {"model": MODEL, "max_output_tokens": 16, "max_concurrency": 16}
        async with (
            Client(
                api_key=strict.api_key,
                base_url=strict.base_url,
                limiter=_limiter(redis_server.url),
                **common,
            ) as first,
            Client(
                api_key=open_server.api_key,
                base_url=open_server.base_url,
                limiter=_limiter(redis_server.url),
                rpm=6000,
                **common,
            ) as second,
        ):
            others = asyncio.ensure_future(second.run_many(_prompts(120, "b")))
            await asyncio.sleep(0.2)  # B is running at its pace
            own = await first.run_many(_prompts(3, "a"))
            results = await others
    assert all(result.ok for result in [*own, *results])
    refused = [entry.time_s for entry in strict.ledger.entries if entry.status == 429]
    assert refused, "A was never refused: the test proves nothing"
    assert results.stats.rate_limited == 0 and open_server.ledger.rate_limited == 0
    times = sorted(entry.time_s for entry in open_server.ledger.entries)
    # B stopped right after A's first 429, for about the retry-after A was given (~0.5 s;
    # B sends every 10 ms otherwise).
    gaps = [(later - earlier, earlier) for earlier, later in zip(times, times[1:], strict=False)]
    longest, began = max(gaps)
    assert longest >= 0.3, gaps[:5]
    assert refused[0] - 0.05 <= began <= refused[0] + 0.1, (began, refused)


async def test_token_charges_are_corrected_from_the_reported_usage(
    redis_server: RedisServer,
) -> None:
    tpm = 6000.0  # 98.5 tokens/s, a shared bucket of 49 tokens
    async with FakeOpenAI(rpm=None, tpm=None) as server:
        results = await ratelane.arun_many(
            ["Say hi."],
            model=MODEL,
            max_output_tokens=500,  # charged ~505 tokens; the answer uses a handful
            api_key=server.api_key,
            base_url=server.base_url,
            limiter=_limiter(redis_server.url, tpm=tpm),  # the shared budget's own ceiling
        )
    [result] = results
    assert result.ok and result.usage is not None
    assert result.usage.total_tokens < 50
    # Another process asks the budget for 40 tokens: with the refund it gets them now;
    # without it the bucket would owe ~456 tokens, about 4.6 s of refill.
    probe = _limiter(redis_server.url, tpm=tpm)
    try:
        assert await probe.acquire(tokens=40, queue=False) == 0.0
    finally:
        await probe.aclose()


async def test_redis_killed_mid_run_then_restarted_falls_back_rejoins_and_keeps_everything(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ratelane")
    rpm = 6000.0  # 98.5/s shared; 1/2 of it alone (another process is registered)
    other = _limiter(redis_server.url)
    await other.register()
    async with FakeOpenAI(rpm=None, tpm=None, latency=Latency(0.01)) as server:
        async with Client(
            api_key=server.api_key,
            base_url=server.base_url,
            model=MODEL,
            max_output_tokens=16,
            rpm=rpm,
            max_concurrency=32,
            limiter=_limiter(redis_server.url, timeout_s=0.5),
        ) as client:
            governor = client.engine.governor
            assert isinstance(governor, SharedGovernor)
            running = asyncio.ensure_future(client.run_many(_prompts(220, "r")))
            await asyncio.sleep(0.4)
            await asyncio.to_thread(redis_server.kill)
            killed = time.monotonic()
            await asyncio.sleep(1.2)
            assert governor.alone
            await asyncio.to_thread(redis_server.start)  # same port, empty
            restarted = time.monotonic()
            results = await running
            rejoined = governor.rejoins
    await other.aclose()
    # Nothing lost, nothing twice.
    assert all(result.ok for result in results)
    assert sorted(result.custom_id for result in results) == sorted(
        f"request-{index}" for index in range(220)
    )
    assert len(server.ledger.entries) == 220
    assert governor.fallbacks == 1 and rejoined == 1
    messages = [record.getMessage() for record in caplog.records]
    assert any("Pacing alone at 1/2 of the limit (3000 requests/min" in m for m in messages)
    assert any("re-joined the shared rate budget" in m for m in messages)
    # Alone, the process paced at its half: no burst while Redis was gone.
    times = [entry.time_s for entry in server.ledger.entries]
    alone = [t for t in times if killed + 0.1 <= t <= restarted]
    per_s = rpm / 60 * 0.985
    assert len(alone) <= per_s / 2 * (restarted - killed) + per_s / 2 * 0.5 + 2
    assert len(alone) >= per_s / 2 * (restarted - killed - 0.1) * 0.8  # and kept going
    # The shared bucket (0.5 s of the rate) plus a second of refill, by Redis' clock; 20%
    # for the loop delays between admission and arrival at the server.
    busiest, at = busiest_window(times, 1.0)
    assert busiest <= 1.5 * per_s * 1.2, (busiest, at - killed)


async def test_an_unreachable_redis_at_the_start_is_a_configuration_error() -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with FakeOpenAI() as server:
        with pytest.raises(ConfigurationError, match="nothing was sent") as caught:
            await ratelane.arun_many(
                ["hi"],
                model=MODEL,
                api_key=server.api_key,
                base_url=server.base_url,
                limiter=f"redis://:hunter2@127.0.0.1:{port}/0",
            )
    assert "hunter2" not in str(caught.value) and "HINT" in str(caught.value)
    assert server.ledger.total == 0
