"""The response cache's side of a request: answer it from the cache, or store its success.

Only plain requests are cached: a streamed or background request's answer is
not the one-shot body the cache stores. The key is the request as the caller
made it (before any rejected parameter was dropped), so the same input finds
the same answer on every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ratelane._core.batch_line import default_custom_id
from ratelane._core.models import Request, Result, Usage
from ratelane._state.response_cache import ResponseCache

__all__ = ["cacheable", "from_cache"]


def cacheable(body: Mapping[str, Any]) -> bool:
    return not (body.get("stream") or body.get("background"))


def from_cache(cache: ResponseCache, index: int, request: Request) -> Result | None:
    """The cached answer to ``request`` as a successful Result (``cached=True``), or ``None``."""
    body = request.body
    if not cacheable(body):
        return None
    raw = cache.get(request.path, body)
    if raw is None:
        return None
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return Result(
        index=index,
        custom_id=request.custom_id or default_custom_id(index),
        ok=True,
        status_code=200,
        raw_body=raw,
        usage=Usage.from_body(parsed),
        path=request.path,
        cached=True,
    )
