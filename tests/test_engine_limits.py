"""Fatal stops, concurrent runs and secrecy, against the fake server over real sockets.

Pacing, cool-downs and discovery run on virtual time in test_engine_virtual.py;
these loopback tests check the same engine end to end and take milliseconds.
"""

import asyncio
import logging

import pytest

import ratelane
from ratelane import APIError, Client, ConfigurationError, FatalError, RetryPolicy
from ratelane.testing import FakeOpenAI, Faults


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


async def test_the_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-proj-SECRETSECRETSECRET-9876"
    caplog.set_level(logging.DEBUG, logger="ratelane")
    faults = Faults(error_500=0.3, reset=0.1, truncated=0.1)
    async with FakeOpenAI(api_key=secret, faults=faults, seed=4) as server:
        async with Client(
            api_key=secret,
            base_url=server.base_url,
            retry=RetryPolicy(initial_wait_s=0.001, max_wait_s=0.005, max_attempts=2),
            # Should the breaker open under these faults, its pauses stay short (and its
            # log lines are in the haystack below).
            breaker=ratelane.BreakerPolicy(pause_s=0.01, max_pause_s=0.05),
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


async def test_two_concurrent_run_many_on_one_client_keep_their_own_stats() -> None:
    async with FakeOpenAI(latency=0.01) as server:
        async with Client(api_key=server.api_key, base_url=server.base_url) as client:
            first, second = await asyncio.gather(
                client.run_many([f"a{i}" for i in range(30)], model="m"),
                client.run_many([f"b{i}" for i in range(7)], model="m"),
            )
        sent = server.ledger.total
    assert (first.stats.succeeded, second.stats.succeeded) == (30, 7)
    assert (first.stats.attempts, second.stats.attempts) == (30, 7)
    assert sent == 37
    assert [r.output_text[-2:] for r in second] == [f"b{i}" for i in range(7)]


async def test_prompts_without_a_model_stop_early_instead_of_failing_a_million_times() -> None:
    pulled = 0

    def prompts():
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield f"p{i}"

    async with FakeOpenAI() as server:
        with pytest.raises(ConfigurationError, match="no model"):
            await ratelane.arun_many(
                prompts(),
                api_key=server.api_key,
                base_url=server.base_url,
                max_concurrency=8,
                progress=False,
            )
        sent = server.ledger.total
    assert sent == 0 and pulled == 1
