"""Character-based token estimates, the way OpenAI's admission control charges.

The API charges a request against tokens-per-minute *before* running it, from a
character count of the input plus the requested output cap. A client that
charges itself with the same formula never spends budget the server has not
also counted; the fake server uses this module so the two agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_OUTPUT_TOKENS",
    "estimate_input_tokens",
    "estimate_request_tokens",
    "output_budget",
]

CHARS_PER_TOKEN = 4
#: Output budget assumed for a request that sends no output cap.
DEFAULT_OUTPUT_TOKENS = 1024

_TEXT_FIELDS = ("instructions", "input", "messages", "prompt")


def _count_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_count_chars(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_count_chars(item) for item in value)
    return 0


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """``ceil(chars / 4)`` over every string inside the prompt-bearing fields.

    Fields counted: ``instructions``, ``input``, ``messages``, ``prompt``; keys
    such as ``role`` count too, which slightly over-charges, the safe side.
    """
    prompt = body.get("input")
    instructions = body.get("instructions")
    if isinstance(prompt, str) and (instructions is None or isinstance(instructions, str)):
        # The common case, without walking every field.
        chars = len(prompt) + (len(instructions) if instructions else 0)
        if "messages" not in body and "prompt" not in body:
            return -(-chars // CHARS_PER_TOKEN)
    chars = sum(_count_chars(body.get(field)) for field in _TEXT_FIELDS)
    return -(-chars // CHARS_PER_TOKEN)


def output_budget(body: Mapping[str, Any], default: int = DEFAULT_OUTPUT_TOKENS) -> int:
    """The output cap a request asks for: ``max_output_tokens``, else
    ``max_completion_tokens`` or ``max_tokens`` times ``n``, else ``default``."""
    cap = body.get("max_output_tokens")
    if type(cap) is int and cap >= 0 and "n" not in body:  # the usual Responses body
        return cap
    for field in ("max_output_tokens", "max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            choices = body.get("n", 1)
            multiplier = choices if isinstance(choices, int) and choices > 0 else 1
            return value * multiplier
    return default


def estimate_request_tokens(
    body: Mapping[str, Any],
    *,
    path: str = "/v1/responses",
    default_output: int = DEFAULT_OUTPUT_TOKENS,
) -> int:
    """Admission charge: input estimate plus output budget (embeddings: input only)."""
    tokens = estimate_input_tokens(body)
    if path.endswith("/embeddings"):
        return tokens
    return tokens + output_budget(body, default_output)
