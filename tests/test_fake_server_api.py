"""The fake server's endpoints, bodies, auth and validation, over real loopback sockets."""

from __future__ import annotations

import ast
import base64
import re
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

import ratelane.testing
from ratelane._core.tokens import estimate_input_tokens
from ratelane.testing import ECHO_PREFIX, REASONING_TOKENS, FakeOpenAI

KEY = "sk-test-0123456789abcdef"
REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY, models=None) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def call(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = KEY,
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.request(
        method, server.base_url + path, json=body, headers=headers
    ) as response:
        return response.status, orjson.loads(await response.read()), response.headers


def assert_error(body: Any, *, type_: str, code: str | None, param: str | None = None) -> str:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (type_, code, param)
    message: str = error["message"]
    return message


def test_public_api_is_locked() -> None:
    assert ratelane.testing.__all__ == [
        "ECHO_PREFIX",
        "FAILED_MARKER",
        "FAULT_HEADER",
        "FAULT_KINDS",
        "INCOMPLETE_MARKER",
        "KEEP",
        "REASONING_TOKENS",
        "STREAM_FAULT_HEADER",
        "STREAM_FAULT_KINDS",
        "TIER_5",
        "TIER_5_LIMITS",
        "Background",
        "BatchOptions",
        "FakeOpenAI",
        "Faults",
        "Latency",
        "Ledger",
        "LedgerEntry",
        "Streaming",
        "fake_openai",
    ]


def test_the_fake_shares_only_durations_and_tokens_with_the_client() -> None:
    # A fake built from the client's own code would agree with its bugs.
    package = Path(ratelane.testing.__file__).parent
    # _argtypes only parses command-line numbers: no protocol behaviour to share.
    allowed = {"ratelane._core.durations", "ratelane._core.tokens", "ratelane._core.argtypes"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = node.module
                if module.startswith("ratelane") and not module.startswith("ratelane.testing"):
                    assert module in allowed, f"{path.name} imports {module}"
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                raise AssertionError(f"{path.name}: use absolute imports for ratelane modules")


def test_importing_ratelane_testing_does_not_import_pytest() -> None:
    code = (
        "import sys, ratelane.testing, ratelane._cli.main; "
        "ratelane._cli.main.build_parser(); "
        "assert 'pytest' not in sys.modules and 'pytest_asyncio' not in sys.modules, 'leak'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- auth -----------------------------------------------------------------------


async def test_wrong_key_gets_401_with_masked_key(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, body, headers = await call(
        session, server, "POST", "/responses", {"model": "m", "input": "x"}, key="sk-abcdefghwxyz"
    )
    assert status == 401
    message = assert_error(body, type_="invalid_request_error", code="invalid_api_key")
    assert message.startswith("Incorrect API key provided: sk-abc*****wxyz.")
    assert "sk-abcdefghwxyz" not in message
    assert REQUEST_ID.fullmatch(headers["x-request-id"])


async def test_missing_key_gets_the_real_401(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        session, server, "POST", "/responses", {"model": "m", "input": "x"}, key=None
    )
    assert status == 401
    message = assert_error(body, type_="invalid_request_error", code=None)
    assert message.startswith("You didn't provide an API key.")


async def test_auth_applies_to_retrieve(server: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    status, _, _ = await call(session, server, "GET", "/responses/resp_x", key="sk-nope")
    assert status == 401


# -- responses ------------------------------------------------------------------

RESPONSE_REQUIRED = {
    "id", "object", "created_at", "status", "completed_at", "error", "incomplete_details",
    "instructions", "max_output_tokens", "metadata", "model", "output", "parallel_tool_calls",
    "previous_response_id", "reasoning", "store", "temperature", "text", "tool_choice", "tools",
    "top_p", "truncation", "usage", "user",
}  # fmt: skip


async def test_response_has_every_required_field(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    request = {"model": "gpt-4.1-mini", "input": "Say hi", "instructions": "Be brief."}
    status, body, headers = await call(session, server, "POST", "/responses", request)
    assert status == 200
    assert set(body) >= RESPONSE_REQUIRED
    assert re.fullmatch(r"resp_[0-9a-f]{48}", body["id"])
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert isinstance(body["created_at"], int)
    assert body["completed_at"] == body["created_at"]
    assert body["error"] is None
    assert body["incomplete_details"] is None
    assert body["instructions"] == "Be brief."
    assert body["metadata"] == {}
    assert body["store"] is True
    assert body["reasoning"] == {"effort": None, "summary": None}
    [message] = body["output"]
    assert re.fullmatch(r"msg_[0-9a-f]{48}", message["id"])
    assert (message["type"], message["role"], message["status"]) == (
        "message",
        "assistant",
        "completed",
    )
    [part] = message["content"]
    assert part == {
        "type": "output_text",
        "annotations": [],
        "logprobs": [],
        "text": ECHO_PREFIX + "Say hi",
    }
    usage = body["usage"]
    assert usage["input_tokens"] == estimate_input_tokens(request)
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens"] == len("Echo: Say hi") // 4
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert REQUEST_ID.fullmatch(headers["x-request-id"])
    assert headers["openai-processing-ms"].isdigit()
    # The default server is a tier-5 account: gpt-4.1-mini's published limits, all six headers.
    assert headers["x-ratelimit-limit-requests"] == "30000"
    assert headers["x-ratelimit-limit-tokens"] == "150000000"
    assert headers["x-ratelimit-remaining-requests"] == "29999"
    assert 0 < int(headers["x-ratelimit-remaining-tokens"]) < 150_000_000
    assert headers["x-ratelimit-reset-requests"].endswith("ms")
    assert headers["x-ratelimit-reset-tokens"].endswith("ms")


async def test_echo_fields_are_echoed(server: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    request = {
        "model": "gpt-4o",
        "input": [
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": [{"type": "input_text", "text": "part one"}]},
            {"role": "user", "content": "part two"},
        ],
        "metadata": {"custom_id": "c-1"},
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "text": {"format": {"type": "json_object"}},
        "truncation": "auto",
        "user": "u-1",
        "max_output_tokens": 500,
    }
    _, body, _ = await call(session, server, "POST", "/responses", request)
    for field in (
        "metadata", "temperature", "top_p", "parallel_tool_calls", "tool_choice", "text",
        "truncation", "user", "max_output_tokens",
    ):  # fmt: skip
        assert body[field] == request[field], field
    assert body["output"][0]["content"][0]["text"] == "Echo: part one\npart two"


async def test_reasoning_model_puts_reasoning_item_first(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    request = {"model": "o4-mini", "input": "think", "reasoning": {"effort": "low"}}
    _, body, _ = await call(session, server, "POST", "/responses", request)
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning"
    assert re.fullmatch(r"rs_[0-9a-f]{48}", reasoning["id"])
    assert reasoning["summary"] == []
    assert message["content"][0]["text"] == "Echo: think"
    assert body["reasoning"] == {"effort": "low", "summary": None}
    details = body["usage"]["output_tokens_details"]
    assert details["reasoning_tokens"] == REASONING_TOKENS["low"]
    assert body["usage"]["output_tokens"] == REASONING_TOKENS["low"] + len("Echo: think") // 4 + 1


async def test_small_cap_gives_incomplete_response(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    text = "x" * 400  # 100 tokens, far more than the cap
    _, body, _ = await call(
        session,
        server,
        "POST",
        "/responses",
        {"model": "gpt-4o", "input": text, "max_output_tokens": 16},
    )
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["completed_at"] is None
    [message] = body["output"]
    assert message["status"] == "incomplete"
    assert message["content"][0]["text"] == ("Echo: " + text)[: 16 * 4]
    assert body["usage"]["output_tokens"] == 16


async def test_reasoning_tokens_count_against_the_cap(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    # 16 tokens minus 8 of low-effort reasoning leaves 8 tokens of text.
    request = {
        "model": "gpt-5-nano",
        "input": "y" * 200,
        "max_output_tokens": 16,
        "reasoning": {"effort": "low"},
    }
    _, body, _ = await call(session, server, "POST", "/responses", request)
    assert body["status"] == "incomplete"
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][1]["status"] == "incomplete"
    assert len(body["output"][1]["content"][0]["text"]) == (16 - REASONING_TOKENS["low"]) * 4


async def test_reasoning_can_eat_the_whole_cap(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    # Default (medium) effort spends 16 tokens: nothing visible fits, no message item.
    request = {"model": "o3", "input": "hello", "max_output_tokens": 16}
    _, body, _ = await call(session, server, "POST", "/responses", request)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["type"] for item in body["output"]] == ["reasoning"]
    assert body["reasoning"]["effort"] == "medium"
    assert body["usage"]["output_tokens"] == 16
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 16


async def test_retrieve_delete_and_chain(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    _, first, _ = await call(session, server, "POST", "/responses", {"model": "m", "input": "one"})
    status, fetched, _ = await call(session, server, "GET", f"/responses/{first['id']}")
    assert status == 200
    assert fetched == first
    chained_request = {"model": "m", "input": "two", "previous_response_id": first["id"]}
    status, chained, _ = await call(session, server, "POST", "/responses", chained_request)
    assert status == 200
    assert chained["previous_response_id"] == first["id"]
    # The history is billed as input on top of the new text.
    assert chained["usage"]["input_tokens"] == (
        estimate_input_tokens(chained_request) + first["usage"]["total_tokens"]
    )
    status, deleted, _ = await call(session, server, "DELETE", f"/responses/{first['id']}")
    assert (status, deleted) == (200, {"id": first["id"], "object": "response", "deleted": True})
    status, body, _ = await call(session, server, "GET", f"/responses/{first['id']}")
    assert status == 404
    assert f"'{first['id']}'" in assert_error(
        body, type_="invalid_request_error", code=None, param="response_id"
    )
    status, _, _ = await call(session, server, "DELETE", f"/responses/{first['id']}")
    assert status == 404


async def test_chaining_onto_an_unknown_id_is_the_real_404(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        session,
        server,
        "POST",
        "/responses",
        {"model": "m", "input": "x", "previous_response_id": "resp_x"},
    )
    assert status == 404
    assert body == {
        "error": {
            "message": "Previous response with id 'resp_x' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }


async def test_previous_response_id_makes_input_optional(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    _, first, _ = await call(session, server, "POST", "/responses", {"model": "m", "input": "a"})
    status, body, _ = await call(
        session, server, "POST", "/responses", {"model": "m", "previous_response_id": first["id"]}
    )
    assert status == 200
    assert body["output"][0]["content"][0]["text"] == ECHO_PREFIX


async def test_store_false_is_not_retrievable(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    _, body, _ = await call(
        session, server, "POST", "/responses", {"model": "m", "input": "x", "store": False}
    )
    assert body["store"] is False
    status, _, _ = await call(session, server, "GET", f"/responses/{body['id']}")
    assert status == 404


async def test_store_is_a_bounded_lru(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, store_limit=2) as small:
        ids = []
        for text in ("a", "b"):
            _, body, _ = await call(
                session, small, "POST", "/responses", {"model": "m", "input": text}
            )
            ids.append(body["id"])
        assert (await call(session, small, "GET", f"/responses/{ids[0]}"))[0] == 200  # now newest
        _, body, _ = await call(session, small, "POST", "/responses", {"model": "m", "input": "c"})
        statuses = [(await call(session, small, "GET", f"/responses/{i}"))[0] for i in ids]
        assert statuses == [200, 404]  # "b" was least recently used


async def test_cancel_foreground_is_400_and_background_is_cancelled(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    _, fore, _ = await call(session, server, "POST", "/responses", {"model": "m", "input": "x"})
    status, body, _ = await call(session, server, "POST", f"/responses/{fore['id']}/cancel")
    assert status == 400
    assert assert_error(body, type_="invalid_request_error", code=None) == (
        "Cannot cancel a synchronous response."
    )
    _, back, _ = await call(
        session, server, "POST", "/responses", {"model": "m", "input": "x", "background": True}
    )
    status, body, _ = await call(session, server, "POST", f"/responses/{back['id']}/cancel")
    assert (status, body["id"], body["status"]) == (200, back["id"], "cancelled")
    status, _, _ = await call(session, server, "POST", "/responses/resp_nope/cancel")
    assert status == 404


async def test_unknown_url_is_the_real_404(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(session, server, "POST", "/completions-nope", {})
    assert status == 404
    message = assert_error(body, type_="invalid_request_error", code=None)
    assert message == "Invalid URL (POST /v1/completions-nope)"


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "code", "message"),
    [
        ("/responses", {"input": "x"}, "model", "missing_required_parameter",
         "Missing required parameter: 'model'."),
        ("/responses", {"model": "m"}, "input", "missing_required_parameter",
         "Missing required parameter: 'input'."),
        ("/responses", {"model": "m", "input": "x", "seed": 1}, "seed", "unknown_parameter",
         "Unknown parameter: 'seed'."),
        ("/responses", {"model": "m", "input": "x", "max_output_tokens": 10}, "max_output_tokens",
         "integer_below_min_value",
         "Invalid 'max_output_tokens': integer below minimum value. "
         "Expected a value >= 16, but got 10 instead."),
        ("/responses", {"model": "m", "input": "x", "max_output_tokens": "9"}, "max_output_tokens",
         "invalid_type",
         "Invalid type for 'max_output_tokens': expected an integer, but got string instead."),
        ("/responses", {"model": "m", "input": "x", "temperature": 3}, "temperature",
         "decimal_above_max_value",
         "Invalid 'temperature': decimal above maximum value. "
         "Expected a value <= 2, but got 3 instead."),
        ("/chat/completions", {"model": "m"}, "messages", "missing_required_parameter",
         "Missing required parameter: 'messages'."),
        ("/chat/completions", {"model": "o3", "messages": [], "max_tokens": 50}, "max_tokens",
         "unsupported_parameter",
         "Unsupported parameter: 'max_tokens' is not supported with this model. "
         "Use 'max_completion_tokens' instead."),
        ("/chat/completions", {"model": "m", "messages": [], "n": 1000}, "n",
         "integer_above_max_value",
         "Invalid 'n': integer above maximum value. "
         "Expected a value <= 128, but got 1000 instead."),
        ("/embeddings", {"model": "m", "input": "x", "n": 2}, "n", "unknown_parameter",
         "Unknown parameter: 'n'."),
        ("/embeddings", {"model": "m"}, "input", "missing_required_parameter",
         "Missing required parameter: 'input'."),
    ],
)  # fmt: skip
async def test_invalid_requests_get_the_real_400(
    server: FakeOpenAI,
    session: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    param: str,
    code: str,
    message: str,
) -> None:
    status, answer, headers = await call(session, server, "POST", path, body)
    assert status == 400
    assert assert_error(answer, type_="invalid_request_error", code=code, param=param) == message
    assert REQUEST_ID.fullmatch(headers["x-request-id"])


async def test_invalid_json_is_the_real_400(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        server.base_url + "/responses",
        data=b'{"model": ',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        body = orjson.loads(await response.read())
    assert assert_error(body, type_="invalid_request_error", code=None).startswith(
        "We could not parse the JSON body of your request."
    )


async def test_unknown_model_when_models_are_listed(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, models=["gpt-4o"]) as server:
        status, body, _ = await call(
            session, server, "POST", "/responses", {"model": "gpt-x", "input": "x"}
        )
        assert status == 404
        assert assert_error(body, type_="invalid_request_error", code="model_not_found") == (
            "The model `gpt-x` does not exist or you do not have access to it."
        )
        status, _, _ = await call(
            session, server, "POST", "/responses", {"model": "gpt-4o", "input": "x"}
        )
        assert status == 200


# -- chat completions and embeddings ---------------------------------------------


async def test_chat_completion_shape(server: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hello"}],
        "n": 2,
        "seed": 7,  # deprecated but still a Chat Completions parameter
    }
    status, body, _ = await call(session, server, "POST", "/chat/completions", request)
    assert status == 200
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{29}", body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Echo: Hello"
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == estimate_input_tokens(request)
    assert usage["completion_tokens"] == 2 * 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_completion_cut_by_cap_has_length_finish(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    request = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "z" * 100}],
        "max_completion_tokens": 5,
    }
    _, body, _ = await call(session, server, "POST", "/chat/completions", request)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == ("Echo: " + "z" * 100)[:20]
    assert body["usage"]["completion_tokens"] == 5


async def test_embeddings_are_deterministic_unit_vectors(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    request = {
        "model": "text-embedding-3-small",
        "input": ["apple", "pear", "apple"],
        "dimensions": 8,
    }
    status, body, _ = await call(session, server, "POST", "/embeddings", request)
    assert status == 200
    assert body["object"] == "list"
    assert body["model"] == "text-embedding-3-small"
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    assert all(len(vector) == 8 for vector in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert sum(value * value for value in vectors[0]) == pytest.approx(1.0)
    assert body["usage"] == {"prompt_tokens": 2 + 1 + 2, "total_tokens": 5}
    # base64 packs the same vector as little-endian float32.
    request["encoding_format"] = "base64"
    _, packed, _ = await call(session, server, "POST", "/embeddings", request)
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)


async def test_default_embedding_dimensions(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, embedding_dimensions=4) as server:
        _, body, _ = await call(
            session, server, "POST", "/embeddings", {"model": "e", "input": "x"}
        )
    assert len(body["data"][0]["embedding"]) == 4


# -- admin ------------------------------------------------------------------------


async def test_admin_endpoints(server: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    await call(session, server, "POST", "/responses", {"model": "m", "input": "x"})
    async with session.post(server.url + "/_fake/limits", json={"rpm": 120}) as response:
        assert response.status == 200
        assert await response.json() == {"rpm": 120, "tpm": None}
    assert list(server.limits) == [120, None]
    async with session.get(server.url + "/_fake/ledger") as response:
        summary = await response.json()
    assert summary["total"] == 1
    assert summary["by_status"] == {"200": 1}
    assert summary["rate_series"] == [1]
    async with session.post(server.url + "/_fake/reset") as response:
        assert response.status == 200
    assert server.ledger.total == 0
    async with session.post(server.url + "/_fake/limits", json={"rpm": -1}) as response:
        assert response.status == 400
    async with session.post(server.url + "/_fake/limits", json={"rpm": None}) as response:
        assert await response.json() == {"rpm": None, "tpm": None}
