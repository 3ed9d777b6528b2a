"""Wire bodies: the real error envelopes and the success objects of each endpoint.

Everything returns ``bytes`` (orjson) or plain dicts ready for orjson. Fixed
bodies are serialised once at import. Message texts are copied from real API
answers (see the protocol notes); where the real text is unknown the
docstring of the builder says so.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from ratelane._core.durations import format_duration
from ratelane._core.tokens import CHARS_PER_TOKEN, estimate_input_tokens

__all__ = [
    "ECHO_PREFIX",
    "REASONING_TOKENS",
    "IdMaker",
    "chat_completion",
    "echo_text",
    "embeddings",
    "error",
    "input_text",
    "mask_key",
    "response_object",
]

#: Output text is ``ECHO_PREFIX + <input text>``, so a test can pair answers with requests.
ECHO_PREFIX = "Echo: "
#: Reasoning tokens a reasoning model spends before its visible answer, by effort
#: (``reasoning.effort``, or ``reasoning_effort`` for Chat Completions); default medium.
#: At medium, the minimum ``max_output_tokens`` (16) goes entirely to reasoning and the
#: Response is ``incomplete`` without a message item, as with the real API.
REASONING_TOKENS: Mapping[str, int] = MappingProxyType(
    {"none": 0, "minimal": 4, "low": 8, "medium": 16, "high": 32, "xhigh": 64, "max": 64}
)
_DEFAULT_EFFORT = "medium"


def _reasoning_tokens(effort: Any) -> int:
    return REASONING_TOKENS.get(effort if isinstance(effort, str) else "", 16)


_RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"


def error(
    message: str, type_: str, param: str | None = None, code: str | int | None = None
) -> bytes:
    """The common error envelope; ``param`` and ``code`` are always present."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


SERVER_ERROR_500 = error(
    "The server had an error while processing your request. Sorry about that!", "server_error"
)
# Observed from OpenAI's Cloudflare edge, with an integer code.
BAD_GATEWAY_502 = error("Bad gateway.", "cf_bad_gateway", None, 502)
# The type and code of a 503 body are not verified against the live API.
OVERLOADED_503 = error(
    "Our servers are currently overloaded. Please try again later.",
    "service_unavailable_error",
    None,
    "server_is_overloaded",
)
INSUFFICIENT_QUOTA_429 = error(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    None,
    "insufficient_quota",
)
MISSING_KEY_401 = error(
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
    "blank username) if you're accessing the API from your browser and are prompted for a "
    "username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys.",
    "invalid_request_error",
)
INVALID_JSON_400 = error(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)",
    "invalid_request_error",
)
# The real text for cancelling a foreground response is not verified; this is
# what OpenAI-compatible servers answer.
CANCEL_SYNC_400 = error("Cannot cancel a synchronous response.", "invalid_request_error")


def mask_key(key: str) -> str:
    """``sk-abcdefghwxyz`` -> ``sk-abc*****wxyz``: OpenAI shows a prefix and the last four.

    Keys shorter than 14 characters keep only their first three.
    """
    if len(key) >= 14:
        return f"{key[:6]}{'*' * (len(key) - 10)}{key[-4:]}"
    return f"{key[:3]}{'*' * max(len(key) - 3, 1)}"


def invalid_key(key: str) -> bytes:
    return error(
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def invalid_url(method: str, path: str) -> bytes:
    return error(f"Invalid URL ({method} {path})", "invalid_request_error")


def response_not_found(response_id: str) -> bytes:
    """404 for GET/DELETE/cancel of an unknown id (exact real wording unverified)."""
    return error(
        f"Response with id '{response_id}' not found.", "invalid_request_error", "response_id"
    )


def previous_not_found(response_id: str) -> bytes:
    return error(
        f"Previous response with id '{response_id}' not found.",
        "invalid_request_error",
        "previous_response_id",
        "previous_response_not_found",
    )


def model_not_found(model: str) -> bytes:
    return error(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        None,
        "model_not_found",
    )


def _wait_text(wait_s: float) -> str:
    return format_duration(max(wait_s, 0.001))


def rate_limited(
    *,
    model: str,
    organization: str,
    kind: str,
    limit: int,
    used: int,
    requested: int,
    wait_s: float,
) -> bytes:
    """429 ``rate_limit_exceeded`` for ``kind`` ``"requests"`` or ``"tokens"``."""
    window = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    return error(
        f"Rate limit reached for {model} in organization {organization} on {window}: "
        f"Limit {limit}, Used {used}, Requested {requested}. "
        f"Please try again in {_wait_text(wait_s)}. Visit {_RATE_LIMITS_URL} to learn more.",
        kind,
        None,
        "rate_limit_exceeded",
    )


def request_too_large(*, model: str, organization: str, limit: int, requested: int) -> bytes:
    return error(
        f"Request too large for {model} in organization {organization} on tokens per min (TPM): "
        f"Limit {limit}, Requested {requested}. The input or output tokens must be reduced in "
        f"order to run successfully. Visit {_RATE_LIMITS_URL} to learn more.",
        "tokens",
        None,
        "rate_limit_exceeded",
    )


class IdMaker:
    """Mints ids with the real prefixes from a seeded generator (reproducible runs)."""

    __slots__ = ("_bits",)

    def __init__(self, seed: int) -> None:
        self._bits = random.Random(f"ids-{seed}").getrandbits

    def request_id(self) -> str:
        return f"req_{self._bits(128):032x}"

    def hex48(self) -> str:
        return f"{self._bits(192):048x}"

    def chat_id(self) -> str:
        return f"chatcmpl-{self._bits(116):029x}"


def input_text(value: Any) -> str:
    """The user text of an ``input`` (Responses) or ``messages`` (Chat) value.

    A string is itself; in a list, the text of every item without a role or with
    role ``user`` (string content, or ``text`` of its content parts), joined by
    newlines. System, developer and assistant text is not echoed.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    parts: list[str] = []
    for item in value:
        if isinstance(item, str):
            parts.append(item)
            continue
        if not isinstance(item, Mapping) or item.get("role", "user") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                part["text"]
                for part in content
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            )
    return "\n".join(parts)


def echo_text(value: Any) -> str:
    return ECHO_PREFIX + input_text(value)


def _tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _fit(text: str, cap: int | None, reasoning: int) -> tuple[str, int, bool]:
    """``(visible text, output tokens, truncated)`` under an output cap that includes reasoning."""
    needed = _tokens(text)
    if cap is None or reasoning + needed <= cap:
        return text, reasoning + needed, False
    available = max(cap - reasoning, 0)
    return text[: available * CHARS_PER_TOKEN], cap, True


def response_object(
    body: Mapping[str, Any],
    *,
    ids: IdMaker,
    now: int,
    reasoning_model: bool,
    context_tokens: int = 0,
) -> dict[str, Any]:
    """A Response for a validated create body; ``context_tokens`` bills a chained history.

    The visible text is ``echo_text(body["input"])``. A reasoning model spends
    ``REASONING_TOKENS[effort]`` first; when ``max_output_tokens`` cannot hold the
    rest the answer is cut there and the Response is ``incomplete`` (without
    a message item at all when nothing visible fits).
    """
    model = body["model"]
    cap = body.get("max_output_tokens")
    requested_reasoning = body.get("reasoning")
    if not isinstance(requested_reasoning, Mapping):
        requested_reasoning = {}
    effort = requested_reasoning.get("effort") or _DEFAULT_EFFORT
    reasoning_tokens = _reasoning_tokens(effort) if reasoning_model else 0
    text, output_tokens, truncated = _fit(echo_text(body.get("input")), cap, reasoning_tokens)
    output: list[dict[str, Any]] = []
    if reasoning_model:
        output.append({"id": f"rs_{ids.hex48()}", "type": "reasoning", "summary": []})
    if text:
        output.append(
            {
                "id": f"msg_{ids.hex48()}",
                "type": "message",
                "status": "incomplete" if truncated else "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
                ],
            }
        )
    input_tokens = estimate_input_tokens(body) + context_tokens
    metadata = body.get("metadata")
    conversation = body.get("conversation")
    if isinstance(conversation, str):
        conversation = {"id": conversation}
    return {
        "id": f"resp_{ids.hex48()}",
        "object": "response",
        "created_at": now,
        "status": "incomplete" if truncated else "completed",
        "background": bool(body.get("background", False)),
        "completed_at": None if truncated else now,
        "conversation": conversation,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": cap,
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {
            "effort": effort if reasoning_model else None,
            "summary": requested_reasoning.get("summary"),
        },
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text", _DEFAULT_TEXT),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": body.get("user"),
        "metadata": metadata if metadata else {},
    }


_DEFAULT_TEXT = {"format": {"type": "text"}, "verbosity": "medium"}


def chat_completion(
    body: Mapping[str, Any], *, ids: IdMaker, now: int, reasoning_model: bool
) -> dict[str, Any]:
    """A ``chat.completion`` echoing the user messages; ``n`` identical choices.

    The cap (``max_completion_tokens``, else ``max_tokens``) applies per choice
    and includes reasoning; a cut answer has ``finish_reason`` ``"length"``.
    """
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    effort = body.get("reasoning_effort") or _DEFAULT_EFFORT
    reasoning_tokens = _reasoning_tokens(effort) if reasoning_model else 0
    text, tokens, truncated = _fit(echo_text(body.get("messages")), cap, reasoning_tokens)
    choices_count = body.get("n") or 1
    choice: dict[str, Any] = {
        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "length" if truncated else "stop",
    }
    prompt_tokens = estimate_input_tokens(body)
    completion_tokens = tokens * choices_count
    return {
        "id": ids.chat_id(),
        "object": "chat.completion",
        "created": now,
        "model": body["model"],
        "choices": [{"index": index, **choice} for index in range(choices_count)],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens * choices_count,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_ratelane",
    }


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text``: equal inputs, equal embeddings."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    generator = random.Random(seed)
    vector = [generator.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """``(text to hash, tokens)`` per input: strings, token arrays, or lists of either."""
    if isinstance(value, str):
        return [(value, _tokens(value))]
    if isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        return [(repr(value), len(value))]
    if isinstance(value, list):
        out: list[tuple[str, int]] = []
        for item in value:
            if isinstance(item, str):
                out.append((item, _tokens(item)))
            else:
                out.append((repr(item), len(item) if isinstance(item, list) else 1))
        return out
    return []


def embeddings(body: Mapping[str, Any], *, default_dimensions: int) -> dict[str, Any]:
    """An embedding list; ``encoding_format: "base64"`` packs little-endian float32."""
    dimensions = body.get("dimensions") or default_dimensions
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    prompt_tokens = 0
    for index, (text, tokens) in enumerate(_embedding_inputs(body.get("input"))):
        prompt_tokens += tokens
        vector = embedding_vector(text, dimensions)
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
