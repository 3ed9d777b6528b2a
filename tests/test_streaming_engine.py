"""Streamed attempts on virtual time: events in order, TTFT, retries that repeat nothing.

A scripted Transport double answers ``stream(path, payload)`` with the fake
server's own event sequence (``ratelane.testing._sse``), paced on a
VirtualTimeLoop, so times to first token are exact and a retried stream's
backoff costs nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from _virtual_time import MockTransport, run
from ratelane import APIError, RetryPolicy
from ratelane._api.streaming import stream_events
from ratelane._core.errors import TransportError
from ratelane._core.models import Request, Result
from ratelane._engine.chat_stream import ChatAssembler
from ratelane._engine.engine import Engine
from ratelane._engine.stream import RETRY_EVENT
from ratelane._http.sse import SSEEvent, parse_events
from ratelane._http.stream import StreamReply
from ratelane._limits.governor import RateGovernor
from ratelane.testing._modes import StreamFaultKind
from ratelane.testing._sse import response_frames, response_steps

TEXT = "Hello, streaming world!"  # 23 characters: 6 deltas of 4


def final_response(text: str = TEXT, **changes: Any) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "m",
        "output": [message],
        "error": None,
        "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11},
    }
    return {**response, **changes}


def sse_of(final: dict[str, Any], fault: StreamFaultKind | None = None) -> list[SSEEvent]:
    steps = response_steps(final, chunk_chars=4, fault=fault)
    return parse_events(b"".join(frame for frame, _ in response_frames(steps)))


@dataclass(frozen=True, slots=True)
class Streamed:
    """A 200 event stream: the first delta after ``first_token_s``, each later one ``gap_s``."""

    events: list[SSEEvent]
    first_token_s: float = 0.5
    gap_s: float = 0.01
    #: After the last event: ``None`` ends cleanly, else this is raised (a reset).
    then_raise: Exception | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plain:
    """A whole answer that is not a stream (an error, usually)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Script = Callable[[int], Streamed | Plain]


class StreamingTransport(MockTransport):
    """MockTransport plus ``stream``: call ``n`` (1-based) is answered by ``script(n)``."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.stream_script = script
        self.streamed: list[tuple[float, dict[str, Any]]] = []
        self.yielded = 0

    @asynccontextmanager
    async def stream(self, path: str, payload: bytes) -> AsyncIterator[StreamReply]:
        self.streamed.append((asyncio.get_running_loop().time(), orjson.loads(payload)))
        answer = self.stream_script(len(self.streamed))
        headers = CIMultiDictProxy(CIMultiDict(answer.headers))
        if isinstance(answer, Plain):
            yield StreamReply(answer.status, headers, raw=orjson.dumps(answer.body))
            return
        yield StreamReply(200, headers, self._paced(answer))

    async def _paced(self, answer: Streamed) -> AsyncIterator[SSEEvent]:
        seen_delta = False
        for event in answer.events:
            if event.event is not None and event.event.endswith(".delta"):
                await asyncio.sleep(answer.gap_s if seen_delta else answer.first_token_s)
                seen_delta = True
            self.yielded += 1
            yield event
        if answer.then_raise is not None:
            raise answer.then_raise


def engine_of(transport: MockTransport, **policy: Any) -> Engine:
    retry = RetryPolicy(**{"initial_wait_s": 0.1, **policy})
    return Engine(transport, RateGovernor(), retry, rng=random.Random(0))  # type: ignore[arg-type]


def request(**fields: Any) -> Request:
    return Request({"model": "m", "input": "hi", **fields}, "c0")


async def collect(engine: Engine, req: Request | None = None) -> list[dict[str, Any]]:
    return [item async for item in stream_events(engine, req or request())]


def kinds(items: list[dict[str, Any]]) -> list[str]:
    return [item.get("type") or item["object"] for item in items]


# -- one stream ------------------------------------------------------------------------


def test_events_arrive_in_order_and_the_final_response_comes_last() -> None:
    done = SSEEvent(None, "[DONE]")  # after the terminal event, as some gateways send
    transport = StreamingTransport(lambda n: Streamed([*sse_of(final_response()), done]))
    items = run(collect(engine_of(transport)))
    assert transport.yielded == len(sse_of(final_response())) + 1  # read to the end
    expected = [e.event for e in sse_of(final_response())][:-1]  # all but response.completed
    assert kinds(items) == [*expected, "response"]
    assert [item["sequence_number"] for item in items[:-1]] == list(range(len(expected)))
    assert "".join(item.get("delta", "") for item in items) == TEXT
    assert items[-1] == final_response()
    [(_, sent)] = transport.streamed
    assert sent == {"model": "m", "input": "hi", "stream": True}
    assert transport.calls == []  # nothing went through the plain POST


def test_run_many_stream_records_ttft_per_result_and_in_the_stats() -> None:
    waits = [0.2, 0.4, 0.6, 0.8, 1.0]
    transport = StreamingTransport(
        lambda n: Streamed(sse_of(final_response()), first_token_s=waits[n - 1])
    )
    engine = engine_of(transport)
    results: list[Result] = []

    async def sink(result: Result) -> None:
        results.append(result)

    items: Iterator[tuple[int, Request]] = ((i, request()) for i in range(5))
    stats = run(engine.new_run(max_concurrency=1, stream=True).drive(items, sink))
    assert [result.ttft_s for result in results] == pytest.approx(waits, abs=1e-3)
    assert all(result.ok and result.output_text == TEXT for result in results)
    assert results[0].latency_s == pytest.approx(0.2 + 5 * 0.01, abs=1e-3)
    assert results[0].usage is not None and results[0].usage.output_tokens == 6
    summary = stats.as_dict()
    assert summary["ttft_p50_s"] == pytest.approx(0.6, abs=1e-3)
    assert summary["ttft_p95_s"] == pytest.approx(1.0, abs=1e-3)
    assert "ttfts_s" not in summary


def test_a_plain_run_has_no_ttft() -> None:
    results = run(engine_of(MockTransport()).execute(0, request()))
    assert results.ttft_s is None
    assert run(_plain_stats()) == (None, None)


async def _plain_stats() -> tuple[Any, Any]:
    engine = engine_of(MockTransport())

    async def sink(result: Result) -> None:
        pass

    stats = await engine.new_run(max_concurrency=1).drive(iter([(0, request())]), sink)
    summary = stats.as_dict()
    return summary["ttft_p50_s"], summary["ttft_p95_s"]


def test_embeddings_in_a_streamed_run_are_sent_plainly() -> None:
    transport = StreamingTransport(lambda n: Streamed(sse_of(final_response())))
    embedding = Request({"model": "e", "input": "x"}, "c1", "/v1/embeddings")
    result = run(engine_of(transport).new_run(max_concurrency=1, stream=True).execute(0, embedding))
    assert result.ok and result.ttft_s is None
    assert transport.streamed == [] and len(transport.calls) == 1
    assert "stream" not in transport.calls[0].body


# -- retried streams -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "then_raise", [None, TransportError("connection broke while reading")], ids=["closed", "reset"]
)
def test_a_cut_stream_is_retried_whole_and_no_event_reaches_the_caller_twice(
    then_raise: Exception | None,
) -> None:
    def script(n: int) -> Streamed:
        if n == 1:
            return Streamed(sse_of(final_response(), "cut"), then_raise=then_raise)
        return Streamed(sse_of(final_response()))

    transport = StreamingTransport(script)
    items = run(collect(engine_of(transport)))
    assert len(transport.streamed) == 2
    cut_at = len(sse_of(final_response(), "cut")) - 1  # the last sequence number before the cut
    [marker] = [item for item in items if item.get("type") == RETRY_EVENT]
    assert marker["attempt"] == 2
    assert marker["after_sequence_number"] == cut_at
    assert marker["error"]["code"] == "connection_error"
    events = [item for item in items[:-1] if item["type"] != RETRY_EVENT]
    numbers = [event["sequence_number"] for event in events]
    assert numbers == list(range(len(numbers)))  # each once, in order, none missing
    assert items.index(marker) == cut_at + 1
    assert "".join(event.get("delta", "") for event in events) == TEXT
    assert items[-1] == final_response()


def _failing(fault: StreamFaultKind, code: str) -> Streamed:
    """A stream ending in ``response.failed`` (after an ``error`` event for ``"error"``)."""
    error = {"code": code, "message": f"{code}!"}
    events = sse_of(final_response(), fault)
    for index, event in enumerate(events):
        data = event.json()
        if data["type"] == "error":
            data["error"].update(error)
        elif data["type"] == "response.failed":
            data["response"]["error"] = error
        else:
            continue
        events[index] = SSEEvent(data["type"], orjson.dumps(data).decode())
    return Streamed(events)


def _error_only(code: str, *, nested: bool) -> Streamed:
    """An ``error`` event, then the connection closes (no ``response.failed``)."""
    head = sse_of(final_response(), "cut")
    error = {"code": code, "message": f"{code}!", "param": None}
    data = {"type": "error", "sequence_number": len(head)}
    data.update({"error": error} if nested else error)
    return Streamed([*head, SSEEvent("error", orjson.dumps(data).decode())])


@pytest.mark.parametrize(
    ("first", "attempts", "outcome"),
    [
        (_failing("failed", "server_error"), 2, "ok"),
        (_failing("error", "server_error"), 2, "ok"),
        (_error_only("rate_limit_exceeded", nested=True), 2, "ok"),
        (_error_only("server_is_overloaded", nested=False), 2, "ok"),
        (_failing("failed", "context_length_exceeded"), 1, "context_length_exceeded"),
        (_error_only("invalid_prompt", nested=False), 1, "invalid_prompt"),
        (_failing("error", "insufficient_quota"), 1, "insufficient_quota"),
        (Plain(500, {"error": {"message": "boom", "type": "server_error"}}), 2, "ok"),
        (Plain(400, {"error": {"message": "bad", "code": "invalid_value"}}), 1, "invalid_value"),
    ],
    ids=[
        "failed-retried",
        "error-then-failed-retried",
        "nested-error-retried",
        "flat-error-retried",
        "failed-permanent",
        "flat-error-permanent",
        "quota-fatal",
        "http-500-retried",
        "http-400-permanent",
    ],
)
def test_how_each_ending_is_judged(first: Streamed | Plain, attempts: int, outcome: str) -> None:
    complete = Streamed(sse_of(final_response()))
    transport = StreamingTransport(lambda n: first if n == 1 else complete)

    async def scenario() -> tuple[list[dict[str, Any]], APIError | None]:
        items: list[dict[str, Any]] = []
        try:
            async for item in stream_events(engine_of(transport), request()):
                items.append(item)
        except APIError as exc:
            return items, exc
        return items, None

    items, error = run(scenario())
    assert len(transport.streamed) == attempts
    types = kinds(items)
    assert "error" not in types and "response.failed" not in types  # outcomes, not events
    if outcome == "ok":
        assert error is None and items[-1] == final_response()
    else:
        assert error is not None and error.code == outcome, error
        assert types.count("response.output_text.delta") == (0 if isinstance(first, Plain) else 3)


def test_a_rate_limited_stream_pauses_the_run_and_resumes_without_repeats() -> None:
    def script(n: int) -> Streamed | Plain:
        if n == 1:
            return Streamed(sse_of(final_response(), "cut"))
        if n == 2:
            error = {"message": "Rate limit reached", "code": "rate_limit_exceeded"}
            return Plain(429, {"error": error}, {"retry-after-ms": "2000"})
        return Streamed(sse_of(final_response()))

    transport = StreamingTransport(script)
    engine = engine_of(transport)
    items = run(collect(engine))
    times = [at for at, _ in transport.streamed]
    assert len(times) == 3 and times[2] - times[1] >= 2.0
    [marker] = [item for item in items if item.get("type") == RETRY_EVENT]
    assert marker["attempt"] == 3 and marker["error"]["code"] == "rate_limit_exceeded"
    numbers = [item["sequence_number"] for item in items[:-1] if item["type"] != RETRY_EVENT]
    assert numbers == sorted(set(numbers))


def test_a_rate_limit_error_mid_stream_cools_the_whole_run_down_like_a_429() -> None:
    # The stream is accepted (200), then ends with an error event: a rate limit all the
    # same, so every request pauses for the time it names, not only this one.
    limited = _error_only("rate_limit_exceeded", nested=True)
    data = orjson.loads(limited.events[-1].data)
    data["error"]["message"] = "Rate limit reached for requests. Please try again in 1.5s."
    limited.events[-1] = SSEEvent("error", orjson.dumps(data).decode())
    transport = StreamingTransport(
        lambda n: limited if n == 1 else Streamed(sse_of(final_response()))
    )
    engine = engine_of(transport)
    items = run(collect(engine))
    assert items[-1] == final_response()
    times = [at for at, _ in transport.streamed]
    assert len(times) == 2 and times[1] - times[0] >= 1.5
    assert engine.governor.cooldowns == 1


def test_the_retries_give_up_after_max_attempts_with_the_last_error() -> None:
    transport = StreamingTransport(lambda n: Streamed(sse_of(final_response(), "cut")))

    async def scenario() -> APIError:
        with pytest.raises(APIError) as raised:
            await collect(engine_of(transport, max_attempts=3))
        return raised.value

    error = run(scenario())
    assert len(transport.streamed) == 3
    assert error.code == "connection_error" and "terminal event" in str(error)


def test_a_slow_consumer_holds_the_stream_back_instead_of_buffering_it_all() -> None:
    many = sse_of(final_response("x" * 4 * 1000))  # 1,000 deltas
    transport = StreamingTransport(lambda n: Streamed(many, first_token_s=0.0, gap_s=0.0))

    async def scenario() -> None:
        iterator = stream_events(engine_of(transport), request())
        first = await anext(iterator)
        assert first["type"] == "response.created"
        await asyncio.sleep(1.0)  # the producer fills the buffer, then waits
        assert 256 <= transport.yielded <= 260 < len(many)
        await iterator.aclose()  # and leaving early cancels it cleanly

    run(scenario())
    assert len(transport.streamed) == 1


# -- Chat Completions streams --------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-1", "created": 1, "model": "m", "choices": [choice]}


def _message(**fields: Any) -> dict[str, Any]:
    base = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    return {**base, **fields}


TOOL_CHUNKS = [
    _chunk({"role": "assistant", "content": None}),
    _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    _chunk({}, "tool_calls"),
]  # fmt: skip
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@pytest.mark.parametrize(
    ("chunks", "choices", "finished"),
    [
        (
            [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}),
             _chunk({"content": " there"}), _chunk({}, "stop")],
            [(_message(content="Hi there"), "stop")],
            True,
        ),
        (TOOL_CHUNKS, [(_message(tool_calls=[TOOL_CALL]), "tool_calls")], True),
        (
            [_chunk({"refusal": "I can"}), _chunk({"refusal": "not."}), _chunk({}, "stop")],
            [(_message(refusal="I cannot."), "stop")],
            True,
        ),
        (
            [_chunk({"content": "a"}, index=1), _chunk({"content": "b"}, index=0),
             _chunk({}, "stop", index=0)],
            [(_message(content="b"), "stop"), (_message(content="a"), None)],
            False,
        ),
    ],
    ids=["text", "tool-call-in-pieces", "refusal", "two-choices-one-unfinished"],
)  # fmt: skip
def test_chat_chunks_assemble_into_the_completion_a_plain_create_returns(
    chunks: list[dict[str, Any]], choices: list[tuple[dict[str, Any], str | None]], finished: bool
) -> None:
    assembler = ChatAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    assembler.feed({"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 3}})
    completion = assembler.completion()
    assert completion["object"] == "chat.completion" and completion["id"] == "chatcmpl-1"
    assert completion["usage"] == {"total_tokens": 3}
    assert [(c["message"], c["finish_reason"]) for c in completion["choices"]] == choices
    assert [c["index"] for c in completion["choices"]] == list(range(len(choices)))
    assert assembler.finished is finished


def _chat_sse(chunks: list[dict[str, Any]], *, done: bool = True) -> list[SSEEvent]:
    events = [SSEEvent(None, orjson.dumps(chunk).decode()) for chunk in chunks]
    return [*events, SSEEvent(None, "[DONE]")] if done else events


def test_a_chat_stream_cut_before_done_is_retried_and_its_ttft_is_the_first_content() -> None:
    text = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}),
            _chunk({"content": "!"}), _chunk({}, "stop")]  # fmt: skip

    def script(n: int) -> Streamed:
        if n == 1:
            return Streamed(_chat_sse(text[:2], done=False), first_token_s=0.0, gap_s=0.0)
        error = {"error": {"message": "overloaded", "code": "server_is_overloaded"}}
        chunks = [*text[:1], error] if n == 2 else text
        return Streamed(_chat_sse(chunks, done=n != 2), gap_s=0.25)

    transport = StreamingTransport(script)
    chat = Request({"model": "m", "messages": []}, "c0", "/v1/chat/completions")
    run_ = engine_of(transport).new_run(max_concurrency=1, stream=True)
    result = run(run_.execute(0, chat))
    assert len(transport.streamed) == 3 and result.ok and result.attempts == 3
    assert result.body["choices"][0]["message"]["content"] == "Hi!"
    # The first attempt's first content chunk came at once: that is the first token.
    assert result.ttft_s == pytest.approx(0.0, abs=1e-3)
    assert transport.streamed[0][1]["stream_options"] == {"include_usage": True}


def test_a_rejected_parameter_is_dropped_and_the_resend_still_streams() -> None:
    rejected = {
        "message": "Unsupported parameter: 'temperature' is not supported with this model.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_parameter",
    }

    def script(n: int) -> Streamed | Plain:
        return Plain(400, {"error": rejected}) if n == 1 else Streamed(sse_of(final_response()))

    transport = StreamingTransport(script)
    result = run(engine_of(transport).execute(0, request(temperature=0.2), events=_ignore))
    assert result.ok and result.dropped_params == ("temperature",)
    assert [body for _, body in transport.streamed] == [
        {"model": "m", "input": "hi", "temperature": 0.2, "stream": True},
        {"model": "m", "input": "hi", "stream": True},
    ]


async def _ignore(event: dict[str, Any]) -> None:
    pass
