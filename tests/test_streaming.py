"""Streaming against the fake server over real loopback sockets: the cross-check of the logic
that tests/test_streaming_engine.py proves on virtual time."""

from __future__ import annotations

import inspect
from typing import Any

import aiohttp
import pytest

import ratelane
from ratelane import Client, RetryPolicy
from ratelane._engine.stream import RETRY_EVENT
from ratelane.testing import FakeOpenAI, Streaming

MODEL = "gpt-4.1-mini"
FAST_RETRY = RetryPolicy(initial_wait_s=0.01, max_wait_s=0.05)


def _client(server: FakeOpenAI, **options: Any) -> Client:
    return Client(model=MODEL, api_key=server.api_key, base_url=server.base_url, **options)


async def test_client_stream_yields_the_servers_events_in_order_then_its_response() -> None:
    async with FakeOpenAI(streaming=Streaming(first_token_s=0.2)) as server:
        async with _client(server) as client:
            items = [item async for item in client.stream("tell me a short story")]
        *events, final = items
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{server.base_url}/responses/{final['id']}",
                headers={"Authorization": f"Bearer {server.api_key}"},
            ) as stored,
        ):
            assert final == await stored.json()  # the very Response the server kept
    assert final["object"] == "response" and final["status"] == "completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.output_item.done"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == final["output"][0]["content"][0]["text"] == "Echo: tell me a short story"


def _chat(text: str) -> dict[str, Any]:
    return {
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": text}]},
    }


async def test_run_many_stream_equals_the_plain_run_and_records_ttft() -> None:
    prompts: list[Any] = [f"prompt number {i}" for i in range(4)]
    prompts += [_chat("a chat question"), _chat("another, longer, chat question")]
    bodies = []
    for stream in (False, True):
        # Same seed, one request at a time: the same ids in the same order.
        async with FakeOpenAI(seed=7, streaming=Streaming(first_token_s=0.05)) as server:
            async with _client(server, max_concurrency=1) as client:
                results = await client.run_many(prompts, stream=stream)
        assert all(result.ok for result in results)
        clock_free = {"created_at": 0, "completed_at": 0, "created": 0}  # wall-clock seconds
        bodies.append([{**r.body, **clock_free} for r in results])
        if stream:
            ttfts = [result.ttft_s for result in results]
            assert all(t is not None and 0.05 <= t < 1.0 for t in ttfts), ttfts
            summary = results.stats.as_dict()
            assert 0.05 <= summary["ttft_p50_s"] <= summary["ttft_p95_s"] < 1.0
        else:
            assert results[0].ttft_s is None and results.stats.as_dict()["ttft_p50_s"] is None
        usages = [result.usage for result in results]
        assert all(usage is not None and usage.output_tokens > 0 for usage in usages)
    assert bodies[0] == bodies[1]


async def test_cut_and_failed_streams_are_retried_and_nothing_is_repeated() -> None:
    faults = Streaming(first_token_s=0.0, cut=0.2, error=0.1, failed=0.1)
    async with FakeOpenAI(seed=3, streaming=faults) as server:
        async with _client(server, retry=FAST_RETRY) as client:
            items = [f"q {i} " * 5 if i % 3 else _chat(f"q {i} " * 5) for i in range(30)]
            results = await client.run_many(items, stream=True)
            assert all(result.ok for result in results), [(r.attempts, r.error) for r in results]
            assert sum(result.attempts > 1 for result in results) >= 5
            markers = 0
            for index in range(8):
                items = [item async for item in client.stream(f"story {index} " * 4)]
                *events, final = items
                markers += sum(event.get("type") == RETRY_EVENT for event in events)
                numbers = [e["sequence_number"] for e in events if e["type"] != RETRY_EVENT]
                assert numbers == list(range(len(numbers)))
                text = "".join(e.get("delta", "") for e in events)
                assert text == final["output"][0]["content"][0]["text"]
        faulted = [entry.fault for entry in server.ledger.entries if entry.fault]
    assert markers >= 1
    assert {"stream_cut", "stream_error", "stream_failed"} <= set(faulted)


def test_ratelane_stream_is_a_plain_iterator_and_leaving_early_stops_it() -> None:
    with FakeOpenAI(streaming=Streaming(first_token_s=0.0)).run_in_thread() as server:
        where = {"api_key": server.api_key, "base_url": server.base_url}
        items = list(ratelane.stream({"input": "hello"}, model=MODEL, **where))
        *events, final = items
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        assert final["object"] == "response"
        assert final["output"][0]["content"][0]["text"] == "Echo: hello"
        iterator = ratelane.stream("a much longer prompt " * 20, model=MODEL, **where)
        first = next(iterator)
        iterator.close()  # cancels the request's loop and joins its thread
        assert first["type"] == "response.created"
        with pytest.raises(ratelane.APIError, match="vendor_flag"):
            list(ratelane.stream("hi", model=MODEL, extra_body={"vendor_flag": 1}, **where))


def test_ratelane_stream_takes_run_manys_options() -> None:
    def options(function: Any) -> dict[str, Any]:
        parameters = inspect.signature(function).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}

    expected = {**options(ratelane.run_many), "path": "/v1/responses"}
    for per_run in ("stream", "background", "journal"):  # one stream is neither
        del expected[per_run]
    assert options(ratelane.stream) == expected
    with pytest.raises(TypeError, match="'max_concurency'; did you mean 'max_concurrency'"):
        ratelane.stream("hi", model=MODEL, api_key="sk-test", max_concurency=2)  # type: ignore[call-arg]


async def test_stream_is_a_run_option_everywhere_and_a_call_overrides_the_client() -> None:
    async with FakeOpenAI(streaming=Streaming(first_token_s=0.0)) as server:
        where = {"api_key": server.api_key, "base_url": server.base_url}
        [one] = await ratelane.arun_many(["a"], model=MODEL, stream=True, **where)
        [two] = [r async for r in ratelane.iter_results(["b"], model=MODEL, stream=True, **where)]
        async with _client(server, stream=True) as client:
            [three] = await client.run_many(["c"])
            [plain] = await client.run_many(["d"], stream=False)
        assert server.ledger.by_status == {200: 4}
    assert [r.ttft_s is not None for r in (one, two, three, plain)] == [True, True, True, False]
    assert all(r.ok for r in (one, two, three, plain))


async def test_a_body_asking_for_a_stream_is_streamed_without_the_option() -> None:
    async with FakeOpenAI(streaming=Streaming(first_token_s=0.0)) as server:
        async with _client(server, retry=RetryPolicy(max_attempts=1)) as client:
            results = await client.run_many([{"input": "hello", "stream": True}])
    (result,) = results
    assert result.ok, result.error
    assert result.attempts == 1 and result.ttft_s is not None
    assert result.body["output"][0]["content"][0]["text"] == "Echo: hello"
