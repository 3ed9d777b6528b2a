"""What a gateway answers differently from OpenAI: LiteLLM's 429s, its wording for a
rejected parameter, and plain-text error bodies (protocol doc, section 10).

Pure functions from the OpenAI-shaped answer the server would send to the
dialect's; the handler picks them by ``ServerOptions``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

__all__ = ["litellm_rate_limited", "litellm_unsupported", "text_error_body"]


def _error(message: str, error_type: str, code: str) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


def litellm_rate_limited(
    *, kind: str, limit: int, used: int, wait_s: float
) -> tuple[bytes, dict[str, str]]:
    """A per-key 429 as LiteLLM sends it: ``code: "429"``, ``retry-after`` in whole
    seconds, ``rate_limit_type`` and ``reset_at``, no ``retry-after-ms``."""
    symbol = "RPM" if kind == "requests" else "TPM"
    message = (
        f"litellm.RateLimitError: Rate limit exceeded for api_key. {symbol} limit={limit}, "
        f"current usage={used}. Crossed the per-key limit; retry after the window resets."
    )
    wait = max(1, math.ceil(wait_s - 1e-9)) if math.isfinite(wait_s) else 60
    reset_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + wait))
    headers = {"retry-after": str(wait), "rate_limit_type": kind, "reset_at": reset_at}
    return _error(message, "throttling_error", "429"), headers


def litellm_unsupported(openai_body: bytes, *, model: str, body: Any) -> bytes:
    """LiteLLM's 400 for a parameter the model refuses, from OpenAI's
    ``unsupported_parameter`` answer: ``code: "400"``, ``param: null``, and
    ``UnsupportedParamsError: <model> doesn't support temperature=0.2`` for a
    scalar value, ``does not support parameters: ['reasoning']`` otherwise."""
    param = orjson.loads(openai_body)["error"].get("param") or ""
    name = param.split(".")[0]
    value = body.get(name) if isinstance(body, dict) else None
    hint = " To drop unsupported openai params from the call, set `litellm.drop_params = True`"
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        detail = f"{model} doesn't support {name}={value}."
    else:
        detail = f"{model} does not support parameters: [{name!r}], for model={model}."
    message = f"litellm.UnsupportedParamsError: {detail}{hint}"
    return _error(message, "None", "400")


def text_error_body(json_body: bytes, status: int) -> bytes:
    """The message of an OpenAI error body as plain text, as some gateways send;
    ``"Internal Server Error"``-style text when the body holds no message."""
    try:
        message = orjson.loads(json_body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = None
    if not isinstance(message, str) or not message:
        message = f"Error {status}"
    return message.encode()
