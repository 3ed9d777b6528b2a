"""Turning what callers pass (prompts, bodies, Batch lines, Requests) into Requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InputError
from .models import SUPPORTED_PATHS, Request

__all__ = ["BodyDefaults", "to_request"]

_BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})


class BodyDefaults:
    """Fields merged *under* every body (the item's own fields win)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = {key: value for key, value in fields.items() if value is not None}

    def apply(self, body: Mapping[str, Any], path: str) -> dict[str, Any]:
        if not self._fields:
            return dict(body)
        merged = {
            key: value
            for key, value in self._fields.items()
            if key not in body and _applies(key, path)
        }
        merged.update(body)
        return merged


def _applies(key: str, path: str) -> bool:
    # Responses-only defaults must not leak into chat or embeddings bodies,
    # where the same names are unknown parameters.
    if path == "/v1/responses":
        return True
    return key == "model"


def to_request(item: Any, index: int, defaults: BodyDefaults) -> Request:
    """One input item as a Request with every default applied."""
    if isinstance(item, str):
        return Request(defaults.apply({"input": item}, "/v1/responses"), f"request-{index}")
    if isinstance(item, Request):
        path = _check_path(item.path, index)
        custom_id = item.custom_id if item.custom_id is not None else f"request-{index}"
        return Request(defaults.apply(item.body, path), custom_id, path, item.method)
    if isinstance(item, Mapping):
        if "body" in item and ("url" in item or "custom_id" in item):
            return _from_batch_line(item, index, defaults)
        return Request(defaults.apply(item, "/v1/responses"), f"request-{index}")
    raise InputError(
        f"cannot send a {type(item).__name__}. "
        "HINT: pass prompt strings, body dicts, Batch-format dicts or ratelane.Request objects",
        index=index,
    )


def _from_batch_line(item: Mapping[str, Any], index: int, defaults: BodyDefaults) -> Request:
    unknown = set(item) - _BATCH_KEYS
    if unknown:
        raise InputError(f"unexpected keys in a Batch-format item: {sorted(unknown)}", index=index)
    custom_id = item.get("custom_id", f"request-{index}")
    if not isinstance(custom_id, str) or not custom_id:
        raise InputError(f"custom_id must be a non-empty string, got {custom_id!r}", index=index)
    method = item.get("method", "POST")
    if method != "POST":
        raise InputError(f"method must be 'POST', got {method!r}", index=index)
    path = _check_path(item.get("url", "/v1/responses"), index)
    body = item["body"]
    if not isinstance(body, Mapping):
        raise InputError(f"body must be a JSON object, got {type(body).__name__}", index=index)
    return Request(defaults.apply(body, path), custom_id, path)


def _check_path(path: Any, index: int) -> str:
    if path in SUPPORTED_PATHS:
        return str(path)
    hint = ""
    if isinstance(path, str) and "/v1" + path in SUPPORTED_PATHS:
        hint = f" HINT: Batch-format urls include the version: '/v1{path}'"
    raise InputError(
        f"url must be one of {', '.join(SUPPORTED_PATHS)}, got {path!r}.{hint}", index=index
    )
