"""run_many / iter_results / Client against the fake server over real sockets."""

import asyncio
import logging
import random

import pytest

import ratelane
from ratelane import Client, Request, RetryPolicy
from ratelane.testing import ECHO_PREFIX, FakeOpenAI, Faults, Latency

FAST_RETRY = RetryPolicy(initial_wait_s=0.001, max_wait_s=0.01, max_attempts=8)


async def test_results_come_back_in_input_order_and_pair_with_inputs() -> None:
    latency = Latency(0.004, sigma=1.0)  # shuffles completion order
    async with FakeOpenAI(latency=latency, seed=3) as server:
        results = await ratelane.arun_many(
            (f"prompt {i}" for i in range(150)),
            model="gpt-4.1-mini",
            api_key=server.api_key,
            base_url=server.base_url,
            max_concurrency=32,
            progress=False,
        )
    assert [r.index for r in results] == list(range(150))
    assert [r.custom_id for r in results] == [f"request-{i}" for i in range(150)]
    assert all(r.ok and r.status_code == 200 for r in results)
    assert [r.output_text for r in results] == [f"{ECHO_PREFIX}prompt {i}" for i in range(150)]
    assert all(r.request_id and r.request_id.startswith("req_") for r in results)
    first = results[0]
    assert first.usage is not None and first.usage.total_tokens > 0
    assert first.attempts == 1
    stats = results.stats
    assert stats.succeeded == 150 and stats.failed == 0
    assert stats.input_tokens == sum(r.usage.input_tokens for r in results if r.usage)
    assert 0 < stats.latency_percentile(50) <= stats.latency_percentile(99)


async def test_every_item_shape_and_endpoint() -> None:
    async with FakeOpenAI() as server:
        items = [
            "a prompt",
            {"input": "a body", "max_output_tokens": 64},
            Request({"model": "gpt-4.1-mini", "input": "a request"}, custom_id="mine"),
            {
                "custom_id": "chat-1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]},
            },
            {
                "custom_id": "emb-1",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "vector me"},
            },
            42,
        ]
        results = await ratelane.arun_many(
            items,
            model="gpt-4.1-mini",
            instructions="Be brief.",
            api_key=server.api_key,
            base_url=server.base_url,
            progress=False,
        )
    prompt, body, request, chat, embedding, invalid = results
    assert prompt.ok and prompt.output_text.startswith(ECHO_PREFIX)
    assert body.ok and body.body["max_output_tokens"] == 64
    assert body.body["instructions"] == "Be brief."
    assert request.custom_id == "mine" and request.output_text == f"{ECHO_PREFIX}a request"
    assert chat.ok and chat.path == "/v1/chat/completions" and chat.output_text
    assert chat.usage is not None and chat.usage.input_tokens > 0
    assert embedding.ok and embedding.body["object"] == "list"
    assert not invalid.ok and invalid.error is not None
    assert invalid.error.code == "invalid_item" and "item 5" in invalid.error.message


async def test_profiles_set_model_effort_and_budget() -> None:
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            ["think"],
            profile="standard",
            api_key=server.api_key,
            base_url=server.base_url,
            progress=False,
        )
        [fast] = await ratelane.arun_many(
            ["quick"],
            profile=ratelane.PROFILES["fast"],
            api_key=server.api_key,
            base_url=server.base_url,
            progress=False,
        )
    body = results[0].body
    assert body["model"].startswith("gpt-5-mini")
    assert body["reasoning"]["effort"] == "low"
    assert body["max_output_tokens"] == 4096
    # effort None: no reasoning sent, so the server echoes its empty default
    assert fast.body["model"].startswith("gpt-4.1-mini")
    assert fast.body["reasoning"]["effort"] is None
    assert fast.body["max_output_tokens"] == 1024


async def test_generator_is_consumed_lazily() -> None:
    pulled = 0

    def endless():
        nonlocal pulled
        for i in range(10**9):
            pulled += 1
            yield f"p{i}"

    async with FakeOpenAI(latency=0.01) as server:
        seen = 0
        async for _result in ratelane.iter_results(
            endless(),
            model="m",
            api_key=server.api_key,
            base_url=server.base_url,
            max_concurrency=8,
        ):
            seen += 1
            if seen == 40:
                break
    # Beyond the 40 consumed: at most 8 results waiting in iter_results' queue
    # (when the consumer lags, as on a loaded machine) and one item per worker.
    assert 40 <= pulled <= 40 + 8 + 8


def test_run_many_works_inside_a_running_event_loop() -> None:
    with FakeOpenAI().run_in_thread() as server:

        async def notebook_cell() -> list[str]:
            results = ratelane.run_many(
                ["from a notebook"],
                model="m",
                api_key=server.api_key,
                base_url=server.base_url,
                progress=False,
            )
            return [r.output_text for r in results]

        assert asyncio.run(notebook_cell()) == [f"{ECHO_PREFIX}from a notebook"]
        plain = ratelane.run_many(
            ["from a script"],
            model="m",
            api_key=server.api_key,
            base_url=server.base_url,
            progress=False,
        )
        assert plain[0].output_text == f"{ECHO_PREFIX}from a script"


async def test_every_retry_class_recovers() -> None:
    faults = Faults(error_500=0.1, error_502=0.04, error_503=0.04, reset=0.06, truncated=0.06)
    async with FakeOpenAI(faults=faults, seed=11) as server:
        items = [{"input": f"p{i}", "metadata": {"custom_id": f"c{i}"}} for i in range(120)]
        results = await ratelane.arun_many(
            items,
            model="m",
            api_key=server.api_key,
            base_url=server.base_url,
            retry=RetryPolicy(initial_wait_s=0.001, max_wait_s=0.01, max_attempts=15),
            progress=False,
            max_concurrency=16,
        )
        ledger = server.ledger
        faulted = {e.custom_id for e in ledger.entries if e.fault == "truncated"}
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        for kind in ("500", "502", "503", "reset", "truncated"):
            assert ledger.by_fault.get(kind, 0) > 0, kind
        # Every attempt reached the server exactly once, and was counted.
        assert ledger.total == results.stats.attempts == sum(r.attempts for r in results)
        truncated_results = [r for r in results if r.body["metadata"]["custom_id"] in faulted]
        assert truncated_results and all(r.attempts >= 2 for r in truncated_results)
        assert results.stats.retried == sum(1 for r in results if r.attempts > 1)


async def test_stall_past_the_timeout_is_retried() -> None:
    faults = Faults(stall=0.3, stall_s=30.0)
    # seed 6: no request stalls more than twice in a row, so the test takes < 1 s
    async with FakeOpenAI(faults=faults, seed=6) as server:
        async with Client(
            api_key=server.api_key,
            base_url=server.base_url,
            timeout_s=0.3,
            retry=FAST_RETRY,
            max_concurrency=8,
        ) as client:
            results = await client.run_many([f"p{i}" for i in range(20)], model="m")
        assert server.ledger.by_fault.get("stall", 0) > 0
    assert all(r.ok for r in results)
    assert any(r.attempts > 1 for r in results)


async def test_unsupported_parameters_are_dropped_once_and_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    faults = Faults(reject_reasoning_models=frozenset({"gpt-4.1-mini"}))
    caplog.set_level(logging.WARNING, logger="ratelane")
    async with FakeOpenAI(faults=faults) as server:
        results = await ratelane.arun_many(
            [f"p{i}" for i in range(40)],
            model="gpt-4.1-mini",
            reasoning={"effort": "low"},
            extra_body={"seed": 7},  # the Responses API has no seed: dropped too
            api_key=server.api_key,
            base_url=server.base_url,
            max_concurrency=4,
            progress=False,
        )
        rejected = server.ledger.by_status.get(400, 0)
    assert all(r.ok for r in results)
    assert all(set(r.dropped_params) == {"reasoning", "seed"} for r in results)
    # Only the first few (those in flight before the first rejection) paid a 400.
    assert rejected <= 2 * 4
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert sum("'reasoning'" in w for w in warnings) == 1
    assert sum("'seed'" in w for w in warnings) == 1


async def test_the_callers_bodies_stay_as_they_were_when_parameters_are_dropped() -> None:
    # Bodies with nothing to merge are sent as the caller's own dicts: removing a
    # parameter the model rejects must copy them, never change them.
    faults = Faults(reject_reasoning_models=frozenset({"gpt-4.1-mini"}))
    bodies = [
        {"model": "gpt-4.1-mini", "input": f"p{i}", "reasoning": {"effort": "low"}}
        for i in range(12)
    ]
    before = [dict(body) for body in bodies]
    async with FakeOpenAI(faults=faults) as server:
        results = await ratelane.arun_many(
            bodies,
            api_key=server.api_key,
            base_url=server.base_url,
            max_concurrency=4,
            progress=False,
        )
    assert all(r.ok and r.dropped_params == ("reasoning",) for r in results)
    assert bodies == before


async def test_permanent_errors_are_not_retried() -> None:
    async with FakeOpenAI(models={"gpt-4.1-mini"}) as server:
        results = await ratelane.arun_many(
            [
                "x",
                {"model": "nope", "input": "y"},
                {"model": "gpt-4.1-mini", "input": "z", "max_output_tokens": 4},
            ],
            model="gpt-4.1-mini",
            api_key=server.api_key,
            base_url=server.base_url,
            progress=False,
        )
    ok, missing_model, too_small = results
    assert ok.ok
    assert not missing_model.ok and missing_model.status_code == 404
    assert missing_model.error is not None and missing_model.attempts == 1
    assert not too_small.ok and too_small.status_code == 400 and too_small.attempts == 1


async def test_request_too_large_fails_once_then_is_refused_up_front() -> None:
    async with FakeOpenAI(tpm=2_000) as server:
        items = [{"input": "small", "max_output_tokens": 100}] + [
            {"input": f"huge {i}", "max_output_tokens": 5_000} for i in range(5)
        ]
        results = await ratelane.arun_many(
            items,
            model="m",
            api_key=server.api_key,
            base_url=server.base_url,
            max_concurrency=1,
            progress=False,
        )
        sent = server.ledger.total
    assert results[0].ok
    assert all(not r.ok for r in results[1:])
    assert all(r.error is not None and r.error.code == "request_too_large" for r in results[1:])
    assert sent == 1  # the limit was learned from the first answer's headers
    assert all(r.attempts == 0 for r in results[1:])


async def test_backoff_waits_follow_the_seeded_policy() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(initial_wait_s=0.5, max_wait_s=4.0, max_attempts=6)
    async with FakeOpenAI(faults=Faults(error_500=1.0)) as server:
        async with Client(
            api_key=server.api_key,
            base_url=server.base_url,
            retry=policy,
            sleep=record,
            jitter_seed=99,
        ) as client:
            [result] = await client.run_many(["always fails"], model="m")
    assert not result.ok and result.attempts == 6 and result.status_code == 500
    rng = random.Random(99)
    expected = [ratelane.backoff_wait(policy, k, rng=rng) for k in range(5)]
    assert waits == expected
    assert all(w <= min(4.0, 0.5 * 2**k) for k, w in enumerate(waits))


async def test_stats_estimate_cost_from_a_price_table() -> None:
    prices = {"gpt-4.1-mini": ratelane.Price(input_per_million=0.4, output_per_million=1.6)}
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            ["price me", "and me"],
            model="gpt-4.1-mini",
            api_key=server.api_key,
            base_url=server.base_url,
            prices=prices,
            progress=False,
        )
    stats = results.stats
    expected = (stats.input_tokens * 0.4 + stats.output_tokens * 1.6) / 1_000_000
    assert stats.cost_usd == pytest.approx(expected)
    assert stats.cost_usd > 0
    summary = stats.as_dict()
    assert summary["succeeded"] == 2
    assert summary["latency_p99_s"] >= summary["latency_p50_s"] > 0


def test_organization_and_project_headers_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-abc")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_xyz")
    client = Client(api_key="sk-test-key-123456")
    headers = client._transport._headers
    assert headers["OpenAI-Organization"] == "org-abc"
    assert headers["OpenAI-Project"] == "proj_xyz"
    assert client.base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize("single", ["one prompt", {"model": "m", "input": "x"}])
def test_a_single_item_instead_of_a_collection_is_refused(single: object) -> None:
    with pytest.raises(ratelane.ConfigurationError, match="wrap it in a list"):
        ratelane.run_many(single, model="m", api_key="sk-test", progress=False)  # type: ignore[arg-type]
