"""The official openai SDK against the fake: where they disagree, the fake is wrong.

Parsed objects are also re-validated with pydantic (the SDK itself builds them
without validation), so a missing required field or a wrong type fails here.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFailedEvent,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

from ratelane.testing import FAULT_HEADER, STREAM_FAULT_HEADER, Background, FakeOpenAI, Faults

KEY = "sk-sdk-test-0123456789"
#: One TLS context for every SDK client here: building the default one loads the CA
#: bundle (~50 ms a client); the fake speaks plain HTTP, so nothing else changes.
TLS = ssl.create_default_context()


def sdk_client(**options: Any) -> openai.AsyncOpenAI:
    """The official SDK client with its default HTTP client, sharing :data:`TLS`."""
    return openai.AsyncOpenAI(**options, http_client=openai.DefaultAsyncHttpxClient(verify=TLS))


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as running:
        yield running


@pytest.fixture
async def client(server: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=10) as sdk:
        yield sdk


async def test_create_retrieve_delete(server: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="gpt-5-mini",
        input="Say hi",
        instructions="Be brief.",
        max_output_tokens=200,
        reasoning={"effort": "low"},
        metadata={"custom_id": "row-1"},
    )
    assert isinstance(response, Response)
    Response.model_validate(response.model_dump(mode="json"))
    assert response.output_text == "Echo: Say hi"
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert response._request_id is not None
    assert response._request_id.startswith("req_")
    assert server.ledger.entries[0].custom_id == "row-1"

    fetched = await client.responses.retrieve(response.id)
    assert fetched == response
    chained = await client.responses.create(
        model="gpt-5-mini", input="again", previous_response_id=response.id
    )
    assert chained.previous_response_id == response.id
    assert chained.output_text == "Echo: again"
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_incomplete_response_parses(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt-4o", input="x" * 200, max_output_tokens=16)
    Response.model_validate(response.model_dump(mode="json"))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == ("Echo: " + "x" * 200)[:64]


async def test_chat_completions_parse(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "Hello"}],
        max_completion_tokens=50,
    )
    assert isinstance(completion, ChatCompletion)
    ChatCompletion.model_validate(completion.model_dump(mode="json"))
    assert completion.choices[0].message.content == "Echo: Hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_embeddings_parse_in_both_encodings(client: openai.AsyncOpenAI) -> None:
    # Without encoding_format the SDK asks for base64 and decodes float32 itself.
    packed = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    plain = await client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    for result in (packed, plain):
        assert isinstance(result, CreateEmbeddingResponse)
        CreateEmbeddingResponse.model_validate(result.model_dump(mode="json"))
        assert [item.index for item in result.data] == [0, 1]
        assert all(len(item.embedding) == 16 for item in result.data)
    assert packed.data[0].embedding == pytest.approx(plain.data[0].embedding, abs=1e-6)
    assert packed.usage.prompt_tokens == 2


async def test_wrong_key_is_authentication_error(server: FakeOpenAI) -> None:
    async with sdk_client(
        base_url=server.base_url, api_key="sk-wrong-key-123456", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.responses.create(model="gpt-4o", input="x")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.request_id is not None
    assert "sk-wrong-key-123456" not in str(caught.value)


async def test_unknown_previous_response_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_x")
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"


async def test_unknown_parameter_is_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="gpt-4o", input="x", extra_body={"seed": 1})
    assert (caught.value.code, caught.value.param) == ("unknown_parameter", "seed")


async def test_quota_is_rate_limit_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.responses.create(
            model="gpt-4o", input="x", extra_headers={FAULT_HEADER: "quota"}
        )
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


async def test_rate_limit_is_rate_limit_error() -> None:
    async with (
        FakeOpenAI(api_key=KEY, rpm=60) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk,
    ):
        await sdk.responses.create(model="gpt-4o", input="x")
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.responses.create(model="gpt-4o", input="x")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert caught.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize("fault", ["500", "502", "503"])
async def test_server_errors_are_internal_server_error(
    client: openai.AsyncOpenAI, fault: str
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(
            model="gpt-4o", input="x", extra_headers={FAULT_HEADER: fault}
        )
    assert caught.value.status_code == int(fault)


async def test_reset_is_connection_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.responses.create(
            model="gpt-4o", input="x", extra_headers={FAULT_HEADER: "reset"}
        )


async def test_stall_is_timeout_error(server: FakeOpenAI) -> None:
    async with sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=0.3) as sdk:
        with pytest.raises(openai.APITimeoutError):
            await sdk.responses.create(
                model="gpt-4o", input="x", extra_headers={FAULT_HEADER: "stall"}
            )


async def test_truncated_body_is_a_bare_json_error(client: openai.AsyncOpenAI) -> None:
    # The SDK does not wrap this one: a cut 200 body surfaces as json.JSONDecodeError.
    with pytest.raises(json.JSONDecodeError):
        await client.responses.create(
            model="gpt-4o", input="x", extra_headers={FAULT_HEADER: "truncated"}
        )


async def test_sdk_retries_honour_retry_after_ms() -> None:
    # 60 RPM with a 1 s quantum: one request per 1 s. The second request is
    # refused with retry-after-ms of about 1 s, twice the SDK's own longest
    # first backoff (0.5 s), so the gap proves the header was used.
    interval_s = 1.0
    async with (
        FakeOpenAI(api_key=KEY, rpm=60, faults=Faults()) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=2) as sdk,
    ):
        await sdk.responses.create(model="gpt-4o", input="first")
        response = await sdk.responses.create(model="gpt-4o", input="second")
        first, refused, retried = server.ledger.entries
    assert response.output_text == "Echo: second"
    assert [e.status for e in (first, refused, retried)] == [200, 429, 200]
    assert [e.retry_count for e in (first, refused, retried)] == [0, 0, 1]
    advertised_s = interval_s - (refused.time_s - first.time_s)
    gap_s = retried.time_s - refused.time_s
    assert advertised_s - 0.005 <= gap_s <= advertised_s + 3.0


async def test_reasoning_only_response_has_empty_output_text(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="o3", input="hello", max_output_tokens=16)
    Response.model_validate(response.model_dump(mode="json"))
    assert response.status == "incomplete"
    assert response.output_text == ""


# -- Batch API (files and batches) ----------------------------------------------

from openai.types import Batch  # noqa: E402  (kept with the Batch API tests it serves)


async def sdk_wait(sdk: openai.AsyncOpenAI, batch_id: str, status: str) -> Batch:
    """Poll with the SDK until the batch reaches ``status``; validate what it parsed."""
    async with asyncio.timeout(4):
        while (batch := await sdk.batches.retrieve(batch_id)).status != status:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    Batch.model_validate(batch.model_dump(mode="json"))
    return batch


async def test_batch_api_parses_with_the_sdk(tmp_path: Path) -> None:
    from openai.types import FileDeleted, FileObject

    from ratelane.testing import BatchOptions

    rows = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-5-mini", "input": f"hi {i}"},
        }
        for i in range(5)
    ]
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
    async with (
        FakeOpenAI(api_key=KEY, batches=BatchOptions(time_scale=0.02)) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk,
    ):
        file = await sdk.files.create(file=source, purpose="batch")
        FileObject.model_validate(file.model_dump(mode="json"))
        assert (file.purpose, file.bytes, file.filename) == (
            "batch",
            source.stat().st_size,
            "input.jsonl",
        )
        assert (await sdk.files.retrieve(file.id)) == file

        batch = await sdk.batches.create(
            input_file_id=file.id,
            endpoint="/v1/responses",
            completion_window="24h",
            metadata={"run": "crosscheck"},
        )
        Batch.model_validate(batch.model_dump(mode="json"))
        assert (batch.status, batch.metadata) == ("validating", {"run": "crosscheck"})
        batch = await sdk_wait(sdk, batch.id, "completed")
        assert batch.request_counts is not None
        assert batch.request_counts.completed == 5
        assert batch.output_file_id is not None

        page = await sdk.batches.list(limit=10)
        assert [item.id for item in page.data] == [batch.id]

        output = await sdk.files.content(batch.output_file_id)
        lines = [json.loads(raw) for raw in output.text.splitlines()]
        assert sorted(line["custom_id"] for line in lines) == [f"r{i}" for i in range(5)]
        for line in lines:
            Response.model_validate(line["response"]["body"])

        deleted = await sdk.files.delete(file.id)
        FileDeleted.model_validate(deleted.model_dump(mode="json"))
        assert deleted.deleted is True
        with pytest.raises(openai.NotFoundError):
            await sdk.files.retrieve(file.id)


async def test_files_list_pages_with_the_sdk(tmp_path: Path) -> None:
    from openai.types import FileObject

    source = tmp_path / "input.jsonl"
    source.write_text('{"custom_id": "a", "method": "POST"}\n')
    async with (
        FakeOpenAI(api_key=KEY) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk,
    ):
        ids = [(await sdk.files.create(file=source, purpose="batch")).id for _ in range(3)]
        await sdk.files.create(file=("notes.txt", b"hi"), purpose="user_data")
        page = await sdk.files.list(purpose="batch", limit=2)
        assert [f.id for f in page.data] == ids[:0:-1]  # newest first
        assert page.has_more is True
        for item in page.data:
            FileObject.model_validate(item.model_dump(mode="json"))
        # The SDK's auto-pagination follows has_more with after=<last id>.
        assert [f.id async for f in sdk.files.list(purpose="batch", limit=2)] == ids[::-1]
        ascending = await sdk.files.list(order="asc")
        assert [f.purpose for f in ascending.data] == ["batch"] * 3 + ["user_data"]
        with pytest.raises(openai.BadRequestError):
            await sdk.files.list(limit=0)


async def test_batch_cancel_and_failure_parse_with_the_sdk(tmp_path: Path) -> None:
    from ratelane.testing import BatchOptions

    source = tmp_path / "input.jsonl"
    source.write_text('{"custom_id": "a", "method": "POST"\n')
    options = BatchOptions(validating_s=0.5, in_progress_s=60, cancelling_s=0.01)
    async with (
        FakeOpenAI(api_key=KEY, batches=options) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk,
    ):
        file = await sdk.files.create(file=source, purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
        )
        cancelled = await sdk.batches.cancel(batch.id)
        assert cancelled.status == "cancelling"
        Batch.model_validate(cancelled.model_dump(mode="json"))
        with pytest.raises(openai.BadRequestError):
            await sdk.batches.create(
                input_file_id=file.id,
                endpoint="/v1/responses",
                completion_window="1h",  # type: ignore[arg-type]
            )

    async with (
        FakeOpenAI(api_key=KEY, batches=BatchOptions(time_scale=0.01)) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk,
    ):
        file = await sdk.files.create(file=source, purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
        )
        batch = await sdk_wait(sdk, batch.id, "failed")
        assert batch.errors is not None
        assert batch.errors.data is not None
        [error] = batch.errors.data
        assert (error.code, error.line) == ("invalid_json_line", 1)


# -- background mode and streaming (issue 12) -----------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


async def test_stream_events_validate_and_yield_the_final_response(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    events = []
    async with await client.responses.create(
        model="gpt-5-mini", input="Say hi", stream=True
    ) as stream:
        async for event in stream:
            _STREAM_EVENT.validate_python(event.model_dump(mode="json"))
            events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert isinstance(events[-1], ResponseCompletedEvent)
    final = events[-1].response
    Response.model_validate(final.model_dump(mode="json"))
    assert final.output_text == "Echo: Say hi"
    assert await client.responses.retrieve(final.id) == final


async def test_stream_helper_accumulates_the_same_text(client: openai.AsyncOpenAI) -> None:
    # The SDK's helper rebuilds the response from the deltas, checking item ids and indexes.
    async with client.responses.stream(model="gpt-4o", input="stream me") as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Echo: stream me"


async def test_nested_error_event_raises_api_error(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="gpt-4o",
        input="x",
        stream=True,
        extra_headers={STREAM_FAULT_HEADER: "error"},
    )
    with pytest.raises(openai.APIError, match="The server had an error"):
        async for _ in stream:
            pass


async def test_failed_stream_is_a_response_failed_event(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="gpt-4o", input="x", stream=True, extra_headers={STREAM_FAULT_HEADER: "failed"}
    )
    events = [event async for event in stream]
    assert isinstance(events[-1], ResponseFailedEvent)
    assert events[-1].response.status == "failed"
    assert events[-1].response.error is not None


async def test_cut_stream_raises_while_iterating(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="gpt-4o", input="x" * 40, stream=True, extra_headers={STREAM_FAULT_HEADER: "cut"}
    )
    seen: list[str] = []

    async def read() -> None:
        async for event in stream:
            seen.append(event.type)

    with pytest.raises(openai.APIConnectionError):
        await read()
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert "response.completed" not in seen


async def test_background_create_retrieve_and_cancel() -> None:
    clock = _Clock()
    async with (
        FakeOpenAI(api_key=KEY, clock=clock, background=Background(1.0, 2.0)) as server,
        sdk_client(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk,
    ):
        created = await sdk.responses.create(model="gpt-5-mini", input="think", background=True)
        assert (created.status, created.background, created.output) == ("queued", True, [])
        Response.model_validate(created.model_dump(mode="json"))
        clock.now = 1.5
        running = await sdk.responses.retrieve(created.id)
        assert running.status == "in_progress"
        Response.model_validate(running.model_dump(mode="json"))
        clock.now = 3.0
        done = await sdk.responses.retrieve(created.id)
        Response.model_validate(done.model_dump(mode="json"))
        assert (done.status, done.output_text) == ("completed", "Echo: think")

        other = await sdk.responses.create(model="gpt-4o", input="stop", background=True)
        cancelled = await sdk.responses.cancel(other.id)
        Response.model_validate(cancelled.model_dump(mode="json"))
        assert cancelled.status == "cancelled"

        with pytest.raises(openai.BadRequestError, match="Background mode requires"):
            await sdk.responses.create(model="gpt-4o", input="x", background=True, store=False)


async def test_chat_stream_chunks_validate_and_carry_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump(mode="json"))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Echo: stream me"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_chat_stream_error_payload_raises(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_headers={STREAM_FAULT_HEADER: "error"},
    )
    with pytest.raises(openai.APIError, match="The server had an error"):
        async for _ in stream:
            pass
