"""SSE streams of ``POST /v1/responses`` on the fake server, over real loopback sockets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratelane._http.sse import SSEParser, parse_events
from ratelane.testing import (
    ECHO_PREFIX,
    FAILED_MARKER,
    FAULT_HEADER,
    INCOMPLETE_MARKER,
    STREAM_FAULT_HEADER,
    FakeOpenAI,
    Faults,
    Latency,
    Streaming,
)
from ratelane.testing._bodies import IdMaker, response_object
from ratelane.testing._modes import StreamFaultKind
from ratelane.testing._sse import response_frames, response_steps

KEY = "sk-test-0123456789abcdef"
TEXT = "stream this answer please"

MESSAGE_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 8,  # "Echo: " + TEXT is 31 characters, 4 a delta
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def body(text: str = TEXT, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "input": text, "stream": True, **extra}


async def stream(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    request: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[list[tuple[str | None, dict[str, Any], float]], BaseException | None]:
    """``(event name, data, seconds since sending)`` of each event, and a read error."""
    parser = SSEParser()
    events: list[tuple[str | None, dict[str, Any], float]] = []
    sent = time.monotonic()
    failure: BaseException | None = None
    async with session.post(
        server.base_url + "/responses",
        json=request,
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        try:
            async for chunk in response.content.iter_any():
                arrived = time.monotonic() - sent
                events += [(e.event, e.json(), arrived) for e in parser.feed(chunk)]
        except aiohttp.ClientPayloadError as exc:
            failure = exc
    return events, failure


def names(events: list[tuple[str | None, dict[str, Any], float]]) -> list[str | None]:
    return [name for name, _, _ in events]


async def test_event_order_sequence_numbers_and_final_body(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        events, failure = await stream(session, server, body(metadata={"custom_id": "s1"}))
        assert failure is None
        assert names(events) == [
            "response.created",
            "response.in_progress",
            *MESSAGE_EVENTS,
            "response.completed",
        ]
        assert [data["sequence_number"] for _, data, _ in events] == list(range(len(events)))
        assert all(data["type"] == name for name, data, _ in events)
        created = events[0][1]["response"]
        assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
        deltas = [data for name, data, _ in events if name == "response.output_text.delta"]
        text = "".join(data["delta"] for data in deltas)
        assert text == ECHO_PREFIX + TEXT
        item_id = events[2][1]["item"]["id"]
        assert all(
            (d["item_id"], d["output_index"], d["content_index"]) == (item_id, 0, 0) for d in deltas
        )
        done = events[-4][1]
        assert (done["type"], done["text"]) == ("response.output_text.done", text)
        final = events[-1][1]["response"]
        assert final["status"] == "completed"
        assert final["output"][0]["content"][0]["text"] == text
        # The final response is the stored one, and has the non-stream shape.
        async with session.get(
            server.base_url + f"/responses/{final['id']}",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response:
            assert orjson.loads(await response.read()) == final
        async with session.post(
            server.base_url + "/responses",
            json=body(stream=False),
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response:
            plain = orjson.loads(await response.read())
        assert set(plain) == set(final)
        assert plain["usage"] == final["usage"]
        (entry, *_) = server.ledger.entries
        assert (entry.status, entry.custom_id, entry.fault) == (200, "s1", None)


async def test_reasoning_model_streams_its_reasoning_item_first(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        events, _ = await stream(session, server, body(model="gpt-5-mini"))
    assert names(events)[2:4] == ["response.output_item.added", "response.output_item.done"]
    assert events[2][1]["item"]["type"] == "reasoning"
    assert events[4][1]["output_index"] == 1
    assert [item["type"] for item in events[-1][1]["response"]["output"]] == [
        "reasoning",
        "message",
    ]


async def test_incomplete_ends_with_response_incomplete(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        events, _ = await stream(session, server, body(f"{INCOMPLETE_MARKER} go"))
    assert names(events)[-1] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    streamed = "".join(d["delta"] for n, d, _ in events if n == "response.output_text.delta")
    assert streamed == final["output"][0]["content"][0]["text"]


async def test_first_token_latency_and_pacing(session: aiohttp.ClientSession) -> None:
    options = Streaming(first_token_s=0.3)
    latency = Latency(per_output_token_s=0.02)
    async with FakeOpenAI(api_key=KEY, streaming=options, latency=latency) as server:
        events, _ = await stream(session, server, body())
    arrivals = {name: at for name, _, at in reversed(events)}  # first arrival of each
    first_delta = arrivals["response.output_text.delta"]
    assert first_delta >= 0.3
    assert arrivals["response.created"] < first_delta - 0.2  # headers and created come first
    # 7 more one-token deltas at 0.02 s each after the first.
    assert events[-1][2] - first_delta >= 7 * 0.02


@pytest.mark.parametrize("how", ["header", "probability"])
async def test_cut_stream_closes_mid_way_without_terminal_event(
    session: aiohttp.ClientSession, how: str
) -> None:
    streaming = Streaming(cut=1.0) if how == "probability" else Streaming()
    headers = {STREAM_FAULT_HEADER: "cut"} if how == "header" else None
    async with FakeOpenAI(api_key=KEY, streaming=streaming) as server:
        events, failure = await stream(session, server, body(), headers)
        (entry,) = server.ledger.entries
    assert failure is not None
    assert names(events) == ["response.created", "response.in_progress", *MESSAGE_EVENTS[:6]]
    assert (entry.status, entry.fault) == (200, "stream_cut")


async def test_truncated_fault_on_a_stream_is_a_cut(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        events, failure = await stream(session, server, body(), {FAULT_HEADER: "truncated"})
    assert failure is not None
    assert names(events)[-1] == "response.output_text.delta"


async def test_error_event_then_response_failed(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        events, failure = await stream(session, server, body(), {STREAM_FAULT_HEADER: "error"})
    assert failure is None
    assert names(events)[-3:] == [
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    error = events[-2][1]
    assert error == {
        "type": "error",
        "error": {
            "type": "server_error",
            "param": None,
            "code": "server_error",
            "message": "The server had an error while processing your request. Sorry about that!",
        },
        "sequence_number": len(events) - 2,
    }
    failed = events[-1][1]["response"]
    assert (failed["status"], failed["error"]["code"], failed["usage"]) == (
        "failed",
        "server_error",
        None,
    )


@pytest.mark.parametrize("how", ["header", "marker"])
async def test_response_failed_alone(session: aiohttp.ClientSession, how: str) -> None:
    text = f"{FAILED_MARKER} x" if how == "marker" else TEXT
    headers = {STREAM_FAULT_HEADER: "failed"} if how == "header" else None
    async with FakeOpenAI(api_key=KEY) as server:
        events, failure = await stream(session, server, body(text), headers)
    assert failure is None
    assert "error" not in names(events)
    assert names(events)[-1] == "response.failed"
    assert events[-1][1]["response"]["status"] == "failed"


async def test_background_stream_starts_queued(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        events, _ = await stream(session, server, body(background=True))
    assert names(events)[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0][1]["response"]["status"] == "queued"
    assert names(events)[-1] == "response.completed"


async def test_errors_before_the_stream_are_json(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        for headers, status in (
            ({FAULT_HEADER: "503"}, 503),
            ({STREAM_FAULT_HEADER: "nope"}, 400),
        ):
            async with session.post(
                server.base_url + "/responses",
                json=body(),
                headers={"Authorization": f"Bearer {KEY}", **headers},
            ) as response:
                assert response.status == status
                assert response.content_type == "application/json"
                assert "error" in orjson.loads(await response.read())
        (_, refused) = server.ledger.entries
        assert refused.tokens == 0  # a bad header is refused before admission


def test_streaming_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"Streaming\.chunk_chars must be an integer >= 1"):
        Streaming(chunk_chars=0)
    with pytest.raises(ValueError, match=r"Streaming\.first_token_s must be a finite number"):
        Streaming(first_token_s=-1)
    with pytest.raises(ValueError, match="HINT: at most one outcome"):
        Streaming(cut=0.5, error=0.5, failed=0.5)


# -- Chat Completions streams (data-only, [DONE]) ---------------------------------


async def chat_stream(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    request: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[list[str], BaseException | None]:
    parser = SSEParser()
    data: list[str] = []
    failure: BaseException | None = None
    async with session.post(
        server.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": TEXT}], **request},
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    ) as response:
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        try:
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    assert event.event is None  # data-only events
                    data.append(event.data)
        except aiohttp.ClientPayloadError as exc:
            failure = exc
    return data, failure


async def test_chat_stream_chunks_usage_and_done(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        data, failure = await chat_stream(
            session, server, {"stream": True, "stream_options": {"include_usage": True}}
        )
    assert failure is None
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(item) for item in data[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == ECHO_PREFIX + TEXT
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8


async def test_chat_stream_without_usage_has_no_usage_chunk(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        data, _ = await chat_stream(session, server, {"stream": True})
    chunks = [orjson.loads(item) for item in data[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


@pytest.mark.parametrize("kind", ["cut", "error"])
async def test_chat_stream_faults(session: aiohttp.ClientSession, kind: str) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        data, failure = await chat_stream(
            session, server, {"stream": True}, {STREAM_FAULT_HEADER: kind}
        )
    assert "[DONE]" not in data
    if kind == "cut":
        assert failure is not None
        assert "error" not in orjson.loads(data[-1])
    else:
        assert failure is None
        assert orjson.loads(data[-1])["error"]["code"] == "server_error"


async def test_a_stalled_stream_that_drops_is_recorded_as_unanswered(
    session: aiohttp.ClientSession,
) -> None:
    faults = Faults(stall_s=0.05, stall_then="drop")
    async with FakeOpenAI(api_key=KEY, faults=faults) as server:
        with pytest.raises(aiohttp.ClientError):
            await stream(session, server, body(), {FAULT_HEADER: "stall"})
        with pytest.raises(aiohttp.ClientError):
            await chat_stream(session, server, {"stream": True}, {FAULT_HEADER: "stall"})
        entries = server.ledger.entries
    assert [(e.path, e.status, e.fault) for e in entries] == [
        ("/v1/responses", 0, "stall"),
        ("/v1/chat/completions", 0, "stall"),
    ]


# -- the event builder alone, with the client's parser ------------------------------


@given(
    text=st.text(max_size=60),
    chunk_chars=st.integers(1, 9),
    reasoning=st.booleans(),
    fault=st.sampled_from([None, "cut", "error", "failed"]),
)
def test_built_streams_parse_back_in_order(
    text: str, chunk_chars: int, reasoning: bool, fault: StreamFaultKind | None
) -> None:
    request = {"model": "o3" if reasoning else "gpt-4o", "input": text}
    final = response_object(request, ids=IdMaker(0), now=0, reasoning_model=reasoning)
    steps = response_steps(final, chunk_chars=chunk_chars, fault=fault)
    payload = b"".join(frame for frame, _ in response_frames(steps))
    events = [(event.event or "", event.json()) for event in parse_events(payload)]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(name == data["type"] for name, data in events)
    deltas = "".join(data["delta"] for name, data in events if name.endswith("text.delta"))
    full = ECHO_PREFIX + text
    if fault is None:
        assert deltas == full
        assert events[-1] == ("response.completed", {**events[-1][1], "response": final})
    else:
        # Cut before the middle delta, then nothing (cut) or the failure.
        sent = sum(name.endswith("text.delta") for name, _ in events)
        assert sent == -(-len(full) // chunk_chars) // 2
        assert full.startswith(deltas)
        terminal = {"response.completed", "response.incomplete", "response.failed"}
        if fault == "cut":
            assert not terminal & {name for name, _ in events}
        else:
            assert events[-1][0] == "response.failed"
            assert (events[-2][0] == "error") == (fault == "error")
