"""Reading and validating input in the OpenAI Batch API file format.

One request per line (JSON Lines)::

    {"custom_id": "request-1", "method": "POST", "url": "/v1/responses", "body": {...}}

Whitespace-only lines are ignored; line numbers always count every physical
line, blank ones included, so they match what an editor shows. A UTF-8
byte-order mark at the start of the file is ignored.

Files can hold millions of lines, so everything streams. The one thing that
grows with the file is duplicate detection, which keeps a 64-bit hash per
``custom_id`` in an ``array('q')`` (8 bytes a line) and finds repeats by
sorting it in bounded chunks and merging them (see :func:`iter_sorted_int64`).
"""

from __future__ import annotations

import heapq
import os
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

# The line checks and their messages are shared with run_many items (one Batch-line model).
from ratelane._core.batch_line import SHAPE_HINT as _SHAPE_HINT
from ratelane._core.batch_line import line_problems as _line_problems
from ratelane._core.batch_line import show as _show
from ratelane._core.batch_line import usual_line_id
from ratelane._core.batch_line import valid_custom_id as _valid_custom_id
from ratelane._core.errors import ConfigurationError, InputError
from ratelane._core.models import SUPPORTED_PATHS, Request
from ratelane._core.tokens import estimate_request_tokens

__all__ = [
    "BatchLine",
    "ValidationReport",
    "int64_hash_function",
    "iter_batch_requests",
    "iter_sorted_int64",
    "validate_batch_file",
]

StrPath = str | os.PathLike[str]
HashFunction = Callable[[str], int]

#: Values sorted at once by ``sorted()``: a chunk costs ~45 bytes per value
#: while it is a list of Python ints, so 2**17 values keep the peak near 6 MB.
SORT_CHUNK = 1 << 17
_READ_BUFFER = 1 << 20
_BOM = b"\xef\xbb\xbf"
_INT64_SPAN = 1 << 64
_INT64_MAX = (1 << 63) - 1


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What :func:`validate_batch_file` found.

    ``lines`` counts non-blank lines; ``problems`` holds the first few
    ``(line_number, message)`` pairs in line order and ``problem_count`` all of
    them; ``estimated_tokens`` sums :func:`estimate_request_tokens` over lines
    with an object ``body``.
    """

    path: str
    lines: int
    problems: tuple[tuple[int, str], ...]
    problem_count: int
    estimated_tokens: int

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def describe(self) -> str:
        """A message for people: the first problems with their line numbers."""
        if self.ok:
            return (
                f"{self.path}: {self.lines:,} {_plural(self.lines, 'request')}, no problems "
                f"(about {self.estimated_tokens:,} tokens)"
            )
        count = self.problem_count
        parts = [
            f"{self.path}: {count:,} {_plural(count, 'problem')} in "
            f"{self.lines:,} request {_plural(self.lines, 'line')}:"
        ]
        parts.extend(f"  line {number}: {message}" for number, message in self.problems)
        hidden = count - len(self.problems)
        if hidden:
            parts.append(f"  ... and {hidden:,} more {_plural(hidden, 'problem')}")
        parts.append(f"HINT: fix the lines above and run again; {_SHAPE_HINT}.")
        return "\n".join(parts)


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One valid input line. ``path`` is the line's ``url`` (e.g. ``/v1/responses``)."""

    line_number: int
    custom_id: str
    path: str
    body: dict[str, Any]

    def to_request(self) -> Request:
        return Request(body=self.body, custom_id=self.custom_id, path=self.path)


# --------------------------------------------------------------------------- reading


def _numbered_lines(path: StrPath) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw_bytes)`` of each non-blank line, 1-based, BOM removed."""
    with open(path, "rb", buffering=_READ_BUFFER) as file:
        for number, raw in enumerate(file, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.isspace() or not raw:
                continue
            yield number, raw


def _parse(raw: bytes) -> tuple[Any, str | None]:
    """The line's JSON value, or ``(None, problem)`` if it is not UTF-8 JSON."""
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as error:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return None, (
                f"invalid UTF-8 at byte {bad.start + 1} of the line; "
                "save the file with UTF-8 encoding"
            )
        message = f"malformed JSON at column {error.pos + 1}: {error.msg}"
        if raw.strip() in (b"{", b"["):
            message += (
                "; the file looks like pretty-printed JSON, but each request must be "
                "on a single line (JSON Lines)"
            )
        return None, message


# --------------------------------------------------------------------------- sorting


def iter_sorted_int64(values: array[int], *, chunk_size: int | None = None) -> Iterator[int]:
    """Yield ``values`` in ascending order without building a list of them all.

    Sorts ``values`` in place, ``chunk_size`` at a time (so the transient list
    of Python ints stays small), then merges the sorted runs with
    :func:`heapq.merge`. Extra memory: one chunk, plus a memoryview per run.
    ``values`` must not be resized while the iterator is alive. ``chunk_size``
    defaults to ``SORT_CHUNK``.
    """
    if chunk_size is None:
        chunk_size = SORT_CHUNK
    if chunk_size < 1:
        raise ConfigurationError(f"chunk_size must be at least 1, got {chunk_size}")
    count = len(values)
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        values[start:stop] = array("q", sorted(values[start:stop]))
    view = memoryview(values)
    runs = [view[start : start + chunk_size] for start in range(0, count, chunk_size)]
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs)


def _repeated(values: array[int]) -> array[int]:
    """The distinct values that occur more than once, ascending."""
    repeated = array("q")
    previous: int | None = None
    for value in iter_sorted_int64(values):
        if value == previous and (not repeated or repeated[-1] != value):
            repeated.append(value)
        previous = value
    return repeated


def int64_hash_function(hash_function: HashFunction) -> HashFunction:
    """``hash_function`` with its results folded into the signed 64-bit range."""
    if hash_function is hash:
        return hash

    def wrapped(text: str) -> int:
        value = hash_function(text) % _INT64_SPAN
        return value - _INT64_SPAN if value > _INT64_MAX else value

    return wrapped


def _contains(sorted_values: array[int], value: int) -> bool:
    index = bisect_left(sorted_values, value)
    return index < len(sorted_values) and sorted_values[index] == value


# --------------------------------------------------------------------------- validation


def validate_batch_file(
    path: StrPath,
    *,
    max_reported: int = 10,
    hash_function: HashFunction = hash,
    estimate_tokens: bool = True,
) -> ValidationReport:
    """Check every line of a Batch-format input file, streaming.

    Reports invalid UTF-8, malformed JSON, non-object lines, a missing,
    non-string or empty ``custom_id``, a ``method`` other than ``POST``, a
    ``url`` outside ``SUPPORTED_PATHS`` (with a hint when ``/v1`` is missing),
    a missing or non-object ``body``, and duplicate ``custom_id`` values (at
    the later line, naming the earlier one).

    Duplicates: the first pass keeps ``hash_function(custom_id)`` per line in
    an ``array('q')``; equal neighbours after a chunked sort are candidates,
    and only then does a second pass compare the exact strings of candidate
    lines. Memory: 8 bytes per line, plus the distinct ``custom_id`` strings
    that share a hash with another line (that is, the duplicated ids).
    ``hash_function`` is injectable so tests can force collisions.
    ``estimate_tokens=False`` skips the token estimate (a third of the time;
    ``estimated_tokens`` is then 0), for callers that only need the verdict.
    """
    if max_reported < 0:
        raise ConfigurationError(f"max_reported must be 0 or more, got {max_reported}")
    hash_of = int64_hash_function(hash_function)
    hashes = array("q")
    add_hash = hashes.append
    problems: list[tuple[int, str]] = []
    problem_count = 0
    lines = 0
    tokens = 0
    for number, raw in _numbered_lines(path):
        lines += 1
        obj, parse_problem = _parse(raw)
        if parse_problem is not None:
            found = [parse_problem]
        else:
            custom_id = usual_line_id(obj)  # the usual valid line, without the full checks
            if custom_id is None:
                found = _line_problems(obj, number)
                custom_id = _valid_custom_id(obj)
            else:
                found = []
            if custom_id is not None:
                add_hash(hash_of(custom_id))
            if estimate_tokens and isinstance(obj, dict):
                body = obj.get("body")
                if isinstance(body, dict):
                    url = obj.get("url")
                    endpoint = url if url in SUPPORTED_PATHS else SUPPORTED_PATHS[0]
                    tokens += estimate_request_tokens(body, path=endpoint)
        if found:
            problem_count += len(found)
            for message in found:
                if len(problems) < max_reported:
                    problems.append((number, message))
    repeated = _repeated(hashes)
    del hashes
    if repeated:
        duplicates, duplicate_count = _find_duplicates(path, repeated, hash_of, max_reported)
        problem_count += duplicate_count
        problems = sorted(problems + duplicates, key=lambda item: item[0])[:max_reported]
    return ValidationReport(
        path=os.fspath(path),
        lines=lines,
        problems=tuple(problems),
        problem_count=problem_count,
        estimated_tokens=tokens,
    )


def _find_duplicates(
    path: StrPath, candidates: array[int], hash_of: HashFunction, max_reported: int
) -> tuple[list[tuple[int, str]], int]:
    """Second pass: exact duplicates among lines whose hash is in ``candidates``."""
    first_line: dict[str, int] = {}
    found: list[tuple[int, str]] = []
    count = 0
    for number, raw in _numbered_lines(path):
        obj, _ = _parse(raw)
        custom_id = _valid_custom_id(obj)
        if custom_id is None or not _contains(candidates, hash_of(custom_id)):
            continue
        first = first_line.setdefault(custom_id, number)
        if first == number:
            continue
        count += 1
        if len(found) < max_reported:
            found.append(
                (
                    number,
                    f"duplicate custom_id {_show(custom_id)}, first used on line {first}; "
                    "every custom_id must be unique (results are matched to requests by it)",
                )
            )
    return found, count


# --------------------------------------------------------------------------- iteration


def iter_batch_requests(
    path: StrPath,
    *,
    skip: Callable[[str], bool] | None = None,
    default_model: str | None = None,
) -> Iterator[BatchLine]:
    """Stream the requests of a validated Batch-format file, in file order.

    ``skip(custom_id)`` returning true leaves a line out (resume passes
    ``done.__contains__``). ``default_model`` is added to bodies without a
    ``"model"``. A line that is not a valid request raises
    :class:`InputError` with its line number: validate first.
    """
    if default_model is not None and not (isinstance(default_model, str) and default_model):
        raise ConfigurationError(
            f"default_model must be a non-empty model name, got {default_model!r}"
        )
    return _iter_requests(path, skip, default_model)


def _iter_requests(
    path: StrPath, skip: Callable[[str], bool] | None, default_model: str | None
) -> Iterator[BatchLine]:
    for number, raw in _numbered_lines(path):
        obj, parse_problem = _parse(raw)
        if parse_problem is not None:
            raise InputError(parse_problem, line=number)
        custom_id = _valid_custom_id(obj)
        if custom_id is not None and skip is not None and skip(custom_id):
            continue
        problems = _line_problems(obj, number)
        if problems or custom_id is None:
            raise InputError("; ".join(problems), line=number)
        body: dict[str, Any] = obj["body"]
        if default_model is not None and "model" not in body:
            body = {"model": default_model, **body}
        yield BatchLine(line_number=number, custom_id=custom_id, path=obj["url"], body=body)
