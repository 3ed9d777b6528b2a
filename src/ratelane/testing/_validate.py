"""Request-body validation with the real 400 answers: unknown, missing, mistyped parameters.

The allow-lists are the create-body fields of each endpoint as the official
SDK (3.x) sends them; a field outside the list gets the real
``unknown_parameter`` error, e.g. ``seed`` on ``/v1/responses``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _bodies
from ._config import ServerOptions

__all__ = ["Invalid", "validate"]

RESPONSES_FIELDS = frozenset(
    {
        "access_programs",
        "background",
        "background_options",
        "context_management",
        "conversation",
        "image",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "moderation",
        "parallel_tool_calls",
        "personality",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
CHAT_FIELDS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
EMBEDDINGS_FIELDS = frozenset({"dimensions", "encoding_format", "input", "model", "user"})

RESPONSES_PATH = "/v1/responses"
CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
ALLOWED_FIELDS = {
    RESPONSES_PATH: RESPONSES_FIELDS,
    CHAT_PATH: CHAT_FIELDS,
    EMBEDDINGS_PATH: EMBEDDINGS_FIELDS,
}
# The field holding the prompt, required unless noted in ``validate``.
_MAX_DIMENSIONS = 8192
_PROMPT_FIELD = {RESPONSES_PATH: "input", CHAT_PATH: "messages", EMBEDDINGS_PATH: "input"}


class Invalid(Exception):
    """A request the real API would refuse before running it: ``status`` and wire ``body``."""

    def __init__(self, status: int, body: bytes, code: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.code = code


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _bad(message: str, param: str | None, code: str | None) -> Invalid:
    return Invalid(400, _bodies.error(message, "invalid_request_error", param, code), code)


def _missing(param: str) -> Invalid:
    return _bad(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _wrong_type(param: str, expected: str, value: Any) -> Invalid:
    return _bad(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
        "invalid_type",
    )


def _unsupported(param: str, extra: str = "") -> Invalid:
    return _bad(
        f"Unsupported parameter: '{param}' is not supported with this model.{extra}",
        param,
        "unsupported_parameter",
    )


def _check_int(
    body: Mapping[str, Any], param: str, minimum: int, maximum: int | None = None
) -> None:
    value = body.get(param)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(param, "an integer", value)
    if value < minimum:
        raise _bad(
            f"Invalid '{param}': integer below minimum value. "
            f"Expected a value >= {minimum}, but got {value} instead.",
            param,
            "integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise _bad(
            f"Invalid '{param}': integer above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            param,
            "integer_above_max_value",
        )


def _check_number(body: Mapping[str, Any], param: str, maximum: float) -> None:
    value = body.get(param)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(param, "a decimal", value)
    if value < 0:
        raise _bad(
            f"Invalid '{param}': decimal below minimum value. "
            f"Expected a value >= 0, but got {value} instead.",
            param,
            "decimal_below_min_value",
        )
    if value > maximum:
        raise _bad(
            f"Invalid '{param}': decimal above maximum value. "
            f"Expected a value <= {maximum:g}, but got {value} instead.",
            param,
            "decimal_above_max_value",
        )


def validate(path: str, body: Any, options: ServerOptions) -> str:
    """Raise :class:`Invalid` for a body the real API refuses; return the model name.

    Checks, in order: the body is an object, no unknown field, ``model``
    present (and known, when ``options.models`` is set), the prompt field
    present (Responses: unless ``previous_response_id``), basic types and
    ranges, then the per-model quirks of ``options.faults``.
    """
    if not isinstance(body, Mapping):
        raise Invalid(400, _bodies.INVALID_JSON_400)
    allowed = ALLOWED_FIELDS[path]
    for name in body:
        if name not in allowed:
            raise _bad(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if options.models is not None and model not in options.models:
        raise Invalid(404, _bodies.model_not_found(model), "model_not_found")
    prompt_field = _PROMPT_FIELD[path]
    if body.get(prompt_field) is None and not (
        path == RESPONSES_PATH and body.get("previous_response_id") is not None
    ):
        raise _missing(prompt_field)
    prompt = body.get(prompt_field)
    if path == CHAT_PATH and not isinstance(prompt, list):
        raise _wrong_type("messages", "an array", prompt)
    if prompt is not None and not isinstance(prompt, str | list):
        raise _wrong_type(prompt_field, "a string or an array", prompt)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _wrong_type("metadata", "an object", metadata)
    _check_number(body, "temperature", 2.0)
    _check_number(body, "top_p", 1.0)
    if path == RESPONSES_PATH:
        _check_int(body, "max_output_tokens", 16)
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise _wrong_type("previous_response_id", "a string", previous)
    elif path == CHAT_PATH:
        _check_int(body, "max_completion_tokens", 1)
        _check_int(body, "max_tokens", 1)
        _check_int(body, "n", 1, 128)
        if body.get("max_tokens") is not None and options.is_reasoning_model(model):
            raise _unsupported("max_tokens", " Use 'max_completion_tokens' instead.")
    else:
        _check_int(body, "dimensions", 1, _MAX_DIMENSIONS)
        if isinstance(prompt, list) and not prompt:
            raise _bad("'$.input' is invalid. Please check the API reference.", "input", None)
    faults = options.faults
    if model in faults.reject_temperature_models and body.get("temperature") is not None:
        raise _unsupported("temperature")
    if model in faults.reject_reasoning_models:
        if path == RESPONSES_PATH and body.get("reasoning") is not None:
            raise _unsupported("reasoning.effort")
        if path == CHAT_PATH and body.get("reasoning_effort") is not None:
            raise _unsupported("reasoning_effort")
    return model
