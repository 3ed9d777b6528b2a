"""One Batch API input line: its shape, the checks and the messages, in one place.

A line (of a file, or an item passed to ``run_many``) is one JSON object::

    {"custom_id": "request-1", "method": "POST", "url": "/v1/responses", "body": {...}}

:func:`line_problems` lists everything wrong with one parsed line, each message
saying what is wrong and how to fix it; :func:`parse_line` turns a valid line
into a :class:`~ratelane._core.models.Request` or raises :class:`InputError`
with those messages. File validation adds the line number, in-memory items
their index (see ``InputError``); the problems themselves are the same.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import InputError
from .models import SUPPORTED_PATHS, Request

__all__ = [
    "SHAPE_HINT",
    "default_custom_id",
    "json_type",
    "line_problems",
    "parse_line",
    "show",
    "valid_custom_id",
]

SHAPE_HINT = (
    'each line must be one JSON object: {"custom_id": "...", "method": "POST", '
    '"url": "/v1/responses", "body": {...}}'
)
_PATHS_TEXT = ", ".join(f'"{path}"' for path in SUPPORTED_PATHS)


def default_custom_id(index: int) -> str:
    """The ``custom_id`` of an item given without one: ``"request-<index>"``, 0-based."""
    return f"request-{index}"


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def show(value: object, limit: int = 60) -> str:
    """A value as JSON, cut to ``limit`` characters, for messages."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _url_problem(url: object) -> str:
    if url is None:
        return f'missing "url"; add one of {_PATHS_TEXT}'
    if not isinstance(url, str):
        got = f"{json_type(url)} {show(url)}"
        return f'"url" must be a string, got {got}; use one of {_PATHS_TEXT}'
    shown = show(url)
    trimmed = url.strip().rstrip("/")
    if not trimmed.startswith("/") and "://" not in trimmed:
        trimmed = "/" + trimmed
    for candidate in SUPPORTED_PATHS:
        short = candidate[len("/v1") :]
        if trimmed == candidate:
            return f'"url" {shown} has extra spaces or a trailing slash; use "{candidate}"'
        if trimmed == short:
            return f'"url" {shown} lacks the "/v1" prefix; use "{candidate}"'
        if "://" in trimmed and trimmed.endswith((candidate, short)):
            return f'"url" {shown} is a full URL; give the path only: "{candidate}"'
    return f'"url" {shown} is not supported; use one of {_PATHS_TEXT}'


def line_problems(obj: Any, number: int) -> list[str]:
    """Everything wrong with one parsed line (empty when it is a valid request).

    ``number`` only shapes the suggested ``custom_id`` in a hint.
    """
    if not isinstance(obj, dict):
        return [f"the line is a JSON {json_type(obj)}, not an object; {SHAPE_HINT}"]
    problems: list[str] = []
    custom_id = obj.get("custom_id")
    if custom_id is None:
        problems.append(
            'missing "custom_id"; give every line a unique string, '
            f'e.g. "custom_id": "request-{number}"'
        )
    elif not isinstance(custom_id, str):
        problems.append(
            f'"custom_id" must be a string, got {json_type(custom_id)} {show(custom_id)}; '
            f'quote it, e.g. "custom_id": "{show(custom_id).strip(chr(34))}"'
        )
    elif not custom_id:
        problems.append(
            f'"custom_id" is empty; give every line a unique non-empty string, '
            f'e.g. "request-{number}"'
        )
    previous = obj.get("previous_custom_id")  # chains (issue 12)
    if previous is not None and not (isinstance(previous, str) and previous):
        problems.append(
            f'"previous_custom_id" must be the non-empty custom_id of the line this one '
            f"continues, got {json_type(previous)} {show(previous)}"
        )
    elif previous is not None and previous == custom_id:
        problems.append(
            f'"previous_custom_id" names the line itself ("{previous}"); name its parent line'
        )
    method = obj.get("method")
    if method != "POST":
        if method is None:
            problems.append('missing "method"; add "method": "POST"')
        elif isinstance(method, str) and method.strip().upper() == "POST":
            problems.append(f'"method" is {show(method)}; write exactly "POST"')
        else:
            problems.append(f'"method" is {show(method)}, but only "POST" is supported')
    url = obj.get("url")
    if url not in SUPPORTED_PATHS:
        problems.append(_url_problem(url))
    body = obj.get("body")
    if not isinstance(body, dict):
        if body is None and "body" not in obj:
            problems.append('missing "body"; put the endpoint\'s parameters in "body": {...}')
        else:
            problems.append(
                f'"body" must be a JSON object of the endpoint\'s parameters, '
                f"got {json_type(body)} {show(body)}"
            )
    return problems


def usual_line_id(obj: Any) -> str | None:
    """The ``custom_id`` of a valid line of the usual shape (a dict with a non-empty
    string ``custom_id``, ``"method": "POST"``, a supported ``url``, an object
    ``body``, no chain), told by a few type tests; ``None``: ask :func:`line_problems`."""
    if type(obj) is not dict:
        return None
    custom_id = obj.get("custom_id")
    if (
        type(custom_id) is str
        and custom_id
        and type(obj.get("body")) is dict
        and obj.get("url") in SUPPORTED_PATHS
        and obj.get("method") == "POST"
        and "previous_custom_id" not in obj
    ):
        return custom_id
    return None


def valid_custom_id(obj: Any) -> str | None:
    """The line's ``custom_id`` when it is a non-empty string, else ``None``."""
    if isinstance(obj, dict):
        custom_id = obj.get("custom_id")
        if isinstance(custom_id, str) and custom_id:
            return custom_id
    return None


def parse_line(obj: Any, *, line: int | None = None, index: int | None = None) -> Request:
    """A valid line as a Request; ``InputError`` naming every problem otherwise.

    Give ``line`` (1-based) for file input or ``index`` (0-based) for an item.
    """
    number = line if line is not None else (index or 0)
    problems = line_problems(obj, number)
    if problems:
        raise InputError("; ".join(problems), line=line, index=index)
    return Request(obj["body"], obj["custom_id"], obj["url"])
