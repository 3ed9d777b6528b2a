"""Rate limits, cool-downs, fatal stops and secrecy, against the fake server.

These are the few wall-clock tests: bounds are generous (the machine may be
loaded) and each run is a few seconds at most.
"""

import asyncio
import logging
import time

import pytest

import ratelane
from ratelane import APIError, Client, FatalError, RetryPolicy
from ratelane.testing import FakeOpenAI, Faults


async def test_learns_the_request_limit_and_holds_it() -> None:
    async with FakeOpenAI(rpm=600) as server:  # 10 requests/s, 1 s quantum
        started = time.monotonic()
        async with Client(api_key=server.api_key, base_url=server.base_url) as client:
            results = await client.run_many([f"p{i}" for i in range(45)], model="m")
            governor = client.engine.governor
            assert governor.learned_rpm == 600
        elapsed = time.monotonic() - started
        limited = server.ledger.rate_limited
    assert all(r.ok for r in results)
    assert limited <= 1
    # 45 requests at ~9.85/s after a half-second burst: about 4 s.
    assert 3.0 <= elapsed <= 9.0


async def test_adapts_when_the_server_lowers_its_limit_mid_run() -> None:
    async with FakeOpenAI(rpm=2400) as server:  # 40/s, then 10/s
        async with Client(api_key=server.api_key, base_url=server.base_url) as client:
            done = 0
            changed_at = 0.0
            async for _ in client.iter_results([f"p{i}" for i in range(70)], model="m"):
                done += 1
                if done == 30:
                    server.set_limits(rpm=600)
                    changed_at = time.monotonic()
            learned = client.engine.governor.learned_rpm
        after_change = time.monotonic() - changed_at
        limited = server.ledger.rate_limited
    assert learned == 600
    assert limited <= 3
    # About 40 requests at 10/s once adapted (never at 40/s, which would be 1 s).
    assert after_change >= 3.0


async def test_a_429_pauses_everyone_once_instead_of_a_stampede() -> None:
    # The client is told a far higher ceiling than the server allows, so its
    # first burst hits 429s; they must cause one shared pause, then the
    # learned rate, not a storm of independent retries.
    async with FakeOpenAI(rpm=120) as server:  # 2/s, bucket of 2
        async with Client(
            api_key=server.api_key,
            base_url=server.base_url,
            rpm=6000,
            tpm=10**9,
            max_concurrency=10,
        ) as client:
            results = await client.run_many([f"p{i}" for i in range(14)], model="m")
            stats = results.stats
        entries = server.ledger.entries
    assert all(r.ok for r in results)
    first_429 = min(e.time_s for e in entries if e.status == 429)
    burst = [e for e in entries if e.time_s - first_429 < 0.2]
    later = [e for e in entries if e.time_s - first_429 >= 0.2]
    assert len(burst) <= 10
    # After the burst, arrivals are paced at the learned 2/s: few further 429s.
    assert sum(1 for e in later if e.status == 429) <= 2
    assert stats.cooldowns <= 3
    assert stats.rate_limited >= 1
    gaps = [b.time_s - a.time_s for a, b in zip(later, later[1:], strict=False)]
    assert min(gaps, default=1.0) >= 0.3


async def test_invalid_key_stops_the_run_after_one_request() -> None:
    async with FakeOpenAI(api_key="sk-right") as server:
        with pytest.raises(FatalError) as caught:
            await ratelane.arun_many(
                [f"p{i}" for i in range(500)],
                model="m",
                api_key="sk-wrong-key-0000",
                base_url=server.base_url,
                progress=False,
            )
        sent = server.ledger.total
    assert caught.value.reason == "invalid_api_key"
    assert sent == 1  # the first request probes alone
    assert caught.value.results[0] is not None and not caught.value.results[0].ok


async def test_quota_exhaustion_stops_the_run_and_keeps_finished_results() -> None:
    async with FakeOpenAI(faults=Faults(quota=0.2), seed=2) as server:
        with pytest.raises(FatalError) as caught:
            await ratelane.arun_many(
                [f"p{i}" for i in range(2000)],
                model="m",
                api_key=server.api_key,
                base_url=server.base_url,
                max_concurrency=8,
                progress=False,
            )
        sent = server.ledger.total
    error = caught.value
    assert error.reason == "insufficient_quota"
    assert sent < 200
    finished = [r for r in error.results if r is not None]
    assert any(r.ok for r in finished)
    assert error.stats is not None and error.stats.succeeded == sum(r.ok for r in finished)


async def test_a_streak_of_identical_permanent_errors_is_fatal() -> None:
    async with FakeOpenAI(models={"gpt-4.1-mini"}) as server:
        with pytest.raises(FatalError) as caught:
            await ratelane.arun_many(
                [f"p{i}" for i in range(1000)],
                model="no-such-model",
                api_key=server.api_key,
                base_url=server.base_url,
                max_concurrency=4,
                progress=False,
                retry=RetryPolicy(fatal_streak=10),
            )
        sent = server.ledger.total
    assert caught.value.reason == "error_streak"
    assert "model_not_found" in str(caught.value)
    assert sent <= 10 + 4


async def test_retry_after_from_the_server_is_honoured_by_the_cooldown() -> None:
    async with FakeOpenAI(rpm=60) as server:  # one request per second
        async with Client(
            api_key=server.api_key,
            base_url=server.base_url,
            rpm=6000,
            tpm=10**9,
            max_concurrency=3,
        ) as client:
            results = await client.run_many(["a", "b", "c"], model="m")
        entries = server.ledger.entries
    assert all(r.ok for r in results)
    admitted = sorted(e.time_s for e in entries if e.status == 200)
    # Quantum of one request per second: the three successes are ~1 s apart.
    assert all(b - a >= 0.8 for a, b in zip(admitted, admitted[1:], strict=False))


async def test_the_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-proj-SECRETSECRETSECRET-9876"
    caplog.set_level(logging.DEBUG, logger="ratelane")
    faults = Faults(error_500=0.3, reset=0.1, truncated=0.1)
    async with FakeOpenAI(api_key=secret, faults=faults, seed=4) as server:
        async with Client(
            api_key=secret,
            base_url=server.base_url,
            retry=RetryPolicy(initial_wait_s=0.001, max_wait_s=0.005, max_attempts=2),
        ) as client:
            results = await client.run_many([f"p{i}" for i in range(30)], model="m")
            shown = [repr(client), repr(client.engine.governor), repr(results)]
            with pytest.raises(APIError) as api_error:
                await client.create({"model": "m", "input": "x", "max_output_tokens": 1})
            shown += [str(api_error.value), repr(api_error.value)]
        with pytest.raises(FatalError) as fatal:
            await ratelane.arun_many(
                ["x"],
                model="m",
                api_key=secret + "-wrong",
                base_url=server.base_url,
                progress=False,
            )
        shown += [str(fatal.value), repr(fatal.value.results)]
    assert any(not r.ok for r in results)  # errors were produced and described
    assert len(caplog.records) >= 30
    haystack = "\n".join(shown) + caplog.text
    assert "SECRETSECRET" not in haystack
    assert "sk-...9876" in repr(client)


async def test_client_create_returns_a_result_or_raises_api_error() -> None:
    async with FakeOpenAI(models={"gpt-4.1-mini"}) as server:
        async with Client(api_key=server.api_key, base_url=server.base_url) as client:
            result = await client.create({"model": "gpt-4.1-mini", "input": "hello"})
            assert result.ok and result.output_text.endswith("hello")
            with pytest.raises(APIError) as caught:
                await client.create({"model": "gpt-x", "input": "hello"})
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.request_id is not None


def test_configuration_errors_name_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ratelane.ConfigurationError, match="OPENAI_API_KEY"):
        Client()
    with pytest.raises(ratelane.ConfigurationError, match="max_concurrency"):
        Client(api_key="k", max_concurrency=0)
    with pytest.raises(ratelane.ConfigurationError, match="base_url"):
        Client(api_key="k", base_url="api.openai.com/v1")
    with pytest.raises(ratelane.ConfigurationError, match="profile"):
        asyncio.run(ratelane.arun_many(["x"], profile="turbo", api_key="k", progress=False))


def test_environment_supplies_key_and_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(api_key="sk-from-env").run_in_thread() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        results = ratelane.run_many(["env"], model="m", progress=False)
    assert results[0].ok


async def test_a_server_without_limit_headers_gets_its_limit_discovered_from_429s() -> None:
    async with FakeOpenAI(rpm=600, rate_limit_headers=False) as server:
        started = time.monotonic()
        async with Client(
            api_key=server.api_key, base_url=server.base_url, max_concurrency=32
        ) as client:
            results = await client.run_many([f"p{i}" for i in range(100)], model="m")
            pace = client.engine.governor.requests_per_minute
        elapsed = time.monotonic() - started
        limited = server.ledger.rate_limited
    assert all(r.ok for r in results)
    assert pace is not None
    assert 300 <= pace <= 700  # found about 600 rpm, with a margin
    # Without discovery every cool-down reopens into a flood: several 429s per success.
    assert limited <= 80
    assert elapsed <= 25
