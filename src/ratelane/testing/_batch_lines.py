"""The ``validating`` phase: check a Batch input file line by line, streaming from disk.

Each problem becomes a BatchError ``{"code", "message", "param", "line"}``
with the 1-based line number, as the real service reports them in
``errors.data``. Codes: ``invalid_json_line`` (message copied from the real
service), ``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``,
``empty_file``, ``too_many_tasks`` (reported by compatibility projects);
``missing_required_parameter``, ``invalid_method``, ``invalid_type`` and
``file_too_large`` are this fake's own (the real codes are unknown).

Pure and thread-safe (it only reads the file): the server runs it in a
worker thread so a 50,000-line file does not stall the event loop.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ratelane._core.tokens import estimate_input_tokens

__all__ = ["MAX_REPORTED_ERRORS", "Scan", "scan_input"]

#: Errors reported per batch; the scan goes on counting lines after that.
MAX_REPORTED_ERRORS = 1000


@dataclass(slots=True)
class Scan:
    """What validation found: byte offsets of the request lines, their model and tokens."""

    offsets: array[int] = field(default_factory=lambda: array("q"))
    model: str | None = None
    input_tokens: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.offsets)


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(
    number: int, raw: bytes, endpoint: str, scan: Scan, seen: set[str]
) -> dict[str, Any] | None:
    """The first problem of one non-blank line, or ``None`` (then it is counted in ``scan``)."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if not isinstance(line, dict):
        return _error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in line:
            return _error(
                "missing_required_parameter",
                f"Missing required parameter: '{name}'.",
                number,
                name,
            )
    custom_id, body = line["custom_id"], line["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return _error(
            "invalid_type", "'custom_id' must be a non-empty string.", number, "custom_id"
        )
    if line["method"] != "POST":
        return _error("invalid_method", "Only the POST method is supported.", number, "method")
    if line["url"] != endpoint:
        return _error(
            "url_mismatch",
            f"The url '{line['url']}' does not match the batch endpoint '{endpoint}'.",
            number,
            "url",
        )
    if not isinstance(body, dict):
        return _error("invalid_type", "'body' must be a JSON object.", number, "body")
    model = body.get("model")
    if not isinstance(model, str):
        return _error(
            "missing_required_parameter",
            "Missing required parameter: 'body.model'.",
            number,
            "body.model",
        )
    if scan.model is None:
        scan.model = model
    elif model != scan.model:
        return _error(
            "model_mismatch",
            f"The model '{model}' differs from '{scan.model}' of the first line: "
            "a batch holds requests for one model only.",
            number,
            "body.model",
        )
    if custom_id in seen:
        return _error(
            "duplicate_custom_id",
            f"The custom_id '{custom_id}' is used more than once in this batch.",
            number,
            "custom_id",
        )
    seen.add(custom_id)
    scan.input_tokens += estimate_input_tokens(body)
    return None


def scan_input(path: Path, *, endpoint: str, max_lines: int, max_bytes: int) -> Scan:
    """Validate the input file at ``path`` for a batch on ``endpoint``."""
    scan = Scan()
    size = path.stat().st_size
    if size > max_bytes:
        scan.errors.append(
            _error(
                "file_too_large",
                f"The input file has {size:,} bytes; a batch input file holds at most "
                f"{max_bytes:,} bytes.",
                None,
            )
        )
        return scan
    seen: set[str] = set()
    offset = 0
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            if scan.lines >= max_lines:
                scan.errors.append(
                    _error(
                        "too_many_tasks",
                        f"The input file has more than {max_lines:,} requests; a batch holds "
                        f"at most {max_lines:,}.",
                        number,
                    )
                )
                return scan
            problem = _check_line(number, raw, endpoint, scan, seen)
            if problem is None:
                scan.offsets.append(start)
            elif len(scan.errors) < MAX_REPORTED_ERRORS:
                scan.errors.append(problem)
    if not scan.lines and not scan.errors:
        scan.errors.append(_error("empty_file", "The input file is empty.", None))
    return scan
