"""Turning what callers pass (prompts, bodies, Batch lines, Requests) into Requests.

Also the one table of body fields each endpoint knows (protocol doc sections 4.2
and 7): a keyword of ``run_many`` and friends that is in no table is a typo, not a
body field, and a default is applied only to bodies of endpoints that know it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .batch_line import default_custom_id, parse_line
from .errors import InputError
from .models import Request

__all__ = [
    "BODY_FIELDS",
    "KNOWN_BODY_FIELDS",
    "NO_MODEL_MESSAGE",
    "BodyDefaults",
    "to_request",
]

_RESPONSES = "/v1/responses"
_SHARED = frozenset(
    {
        "model",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "service_tier",
        "store",
        "metadata",
        "prompt_cache_key",
        "safety_identifier",
        "user",
        "top_logprobs",
    }
)

#: Body fields each endpoint knows, by path. New or vendor-specific fields go
#: through ``extra_body={...}``, which applies to every endpoint.
BODY_FIELDS: Mapping[str, frozenset[str]] = {
    _RESPONSES: _SHARED
    | {
        "input",
        "instructions",
        "reasoning",
        "max_output_tokens",
        "previous_response_id",
        "conversation",
        "background",
        "max_tool_calls",
        "text",
        "include",
        "truncation",
        "prompt",
        "prompt_cache_retention",
        "prompt_cache_options",
        "context_management",
        "moderation",
        "personality",
        "access_programs",
        "background_options",
        "image",
    },
    "/v1/chat/completions": _SHARED
    | {
        "messages",
        "max_completion_tokens",
        "max_tokens",
        "n",
        "seed",
        "stop",
        "response_format",
        "reasoning_effort",
        "logprobs",
        "logit_bias",
        "frequency_penalty",
        "presence_penalty",
        "modalities",
        "prediction",
        "audio",
        "web_search_options",
        "verbosity",
        "moderation",
        "prompt_cache_retention",
        "prompt_cache_options",
        "functions",
        "function_call",
    },
    "/v1/embeddings": frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
}

#: Every body field of any endpoint: the keywords accepted besides ratelane's options.
KNOWN_BODY_FIELDS = frozenset().union(*BODY_FIELDS.values())

NO_MODEL_MESSAGE = "the body has no model. HINT: pass model=... or put 'model' in the body"


class BodyDefaults:
    """Fields merged *under* every body (the item's own fields win).

    ``fields`` apply only to endpoints that know them (``instructions`` is not
    sent to embeddings); ``extra`` (from ``extra_body``) applies everywhere.
    """

    __slots__ = ("_by_path", "model")

    def __init__(self, fields: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
        present = {key: value for key, value in fields.items() if value is not None}
        self._by_path = {
            path: {key: value for key, value in present.items() if key in known} | dict(extra or {})
            for path, known in BODY_FIELDS.items()
        }
        model = self._by_path[_RESPONSES].get("model")
        #: The model every body gets when it names none, if any.
        self.model: str | None = model if isinstance(model, str) else None

    def apply(self, body: Mapping[str, Any], path: str) -> dict[str, Any]:
        defaults = self._by_path.get(path)
        if not defaults:
            # Nothing to merge: the caller's dict as it is (the engine never changes a
            # body in place; it copies one before removing a parameter).
            return body if type(body) is dict else dict(body)
        merged = {key: value for key, value in defaults.items() if key not in body}
        merged.update(body)
        return merged


def to_request(item: Any, index: int, defaults: BodyDefaults) -> Request:
    """One input item as a Request with every default applied and its custom_id assigned.

    Raises ``InputError`` (naming the item) when the item is not a request.
    """
    if isinstance(item, str):
        return Request(defaults.apply({"input": item}, _RESPONSES), default_custom_id(index))
    if type(item) is dict and "body" not in item:  # a plain body, the usual item: no ABC check
        return Request(defaults.apply(item, _RESPONSES), default_custom_id(index))
    if isinstance(item, Request):
        line: Any = {
            "custom_id": item.custom_id or default_custom_id(index),
            "method": item.method,
            "url": item.path,
            "body": dict(item.body) if isinstance(item.body, Mapping) else item.body,
        }
    elif isinstance(item, Mapping):
        if not ("body" in item and ("url" in item or "custom_id" in item)):
            return Request(defaults.apply(item, _RESPONSES), default_custom_id(index))
        # A Batch-format item: the line checks of a file, with method, url and
        # custom_id optional (POST, /v1/responses and request-<index>).
        line = {
            "method": "POST",
            "url": _RESPONSES,
            "custom_id": default_custom_id(index),
            **item,
        }
    else:
        raise InputError(
            f"cannot send a {type(item).__name__}. "
            "HINT: pass prompt strings, body dicts, Batch-format dicts or ratelane.Request objects",
            index=index,
        )
    if line.get("previous_custom_id") is not None:  # chains (issue 12)
        raise InputError(
            '"previous_custom_id" chains lines of a file; run_many sends items independently. '
            "HINT: use ratelane.run_file for a file with chains, run_conversations for turns, "
            "or Client.create(..., previous=result) for one follow-up",
            index=index,
        )
    request = parse_line(line, index=index)
    return Request(defaults.apply(request.body, request.path), request.custom_id, request.path)
