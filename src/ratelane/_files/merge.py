"""Merging shard outputs: one line per ``custom_id``, a success winning over an error.

``ratelane run --shard I/N`` leaves one OUTPUT (and one ERRORS) per shard.
:func:`merge_outputs` reads any number of such files, in any mix (each line
is judged by its content, not by the file it is in), and writes:

* OUTPUT: every success, once per ``custom_id`` (the first one met; later
  duplicates, e.g. from a shard run twice, are dropped);
* ERRORS: for each ``custom_id`` with no success anywhere, one error line
  (the first one met).

Memory stays flat whatever the sizes: lines are streamed and never held; what
grows is 8 bytes per success and per error (64-bit hashes in sorted arrays),
plus a small table for the ids that occur more than once (two distinct ids
sharing a 64-bit hash is a chance of about ``n**2 / 2**65``: one in 370,000
for ten million ids). Two passes: the
first hashes the ids, the second copies lines byte for byte. Torn last lines
(no newline: a process killed mid-write) and lines that are not JSON are
counted and skipped. OUTPUT and ERRORS are written to temporary files and
renamed into place, so a crash never leaves half a merge behind.

With the run's INPUT, :func:`missing_ids` lists the ``custom_id`` values that
have no success in the merge: failed ones and never attempted ones.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ratelane._core.errors import ConfigurationError

from .checkpoint import _fast_success_id
from .input import iter_sorted_int64

__all__ = ["MergeReport", "MissingReport", "merge_outputs", "missing_ids"]

StrPath = str | os.PathLike[str]

_READ_BUFFER = 1 << 20
#: How many missing custom_ids a report names (the count is always complete).
MISSING_SHOWN = 20


# --------------------------------------------------------------------------- reading


def _classify(raw: bytes) -> tuple[str, bool] | None:
    """``(custom_id, is_success)`` of one result line, or None if it is not one.

    A success has ``"error": null`` and a 2xx status, as :class:`DoneSet` reads it.
    """
    custom_id = _fast_success_id(raw)
    if custom_id is not None:
        return custom_id, True
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(line, dict):
        return None
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None
    response = line.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    ok = line.get("error") is None and type(status) is int and 200 <= status < 300
    return custom_id, ok


@dataclass
class _Scan:
    lines: int = 0
    skipped: int = 0


def _result_lines(paths: Sequence[Path], scan: _Scan) -> Iterator[tuple[str, bool, bytes]]:
    """``(custom_id, is_success, raw line)`` of every result line of every file, in order."""
    for path in paths:
        with open(path, "rb", buffering=_READ_BUFFER) as file:
            for raw in file:
                if raw.isspace():
                    continue
                scan.lines += 1
                judged = _classify(raw) if raw.endswith(b"\n") else None
                if judged is None:
                    scan.skipped += 1  # torn last line, or not a result
                    continue
                yield judged[0], judged[1], raw


class _HashSet:
    """Distinct 64-bit values in a sorted array (8 bytes each), and which were repeated."""

    __slots__ = ("repeated", "values")

    def __init__(self, unsorted: array[int]) -> None:
        self.values = array("q")
        self.repeated: set[int] = set()
        previous: int | None = None
        for value in iter_sorted_int64(unsorted):
            if value == previous:
                self.repeated.add(value)
            else:
                self.values.append(value)
                previous = value

    def __contains__(self, value: int) -> bool:
        index = bisect_left(self.values, value)
        return index < len(self.values) and self.values[index] == value

    def __len__(self) -> int:
        return len(self.values)


# --------------------------------------------------------------------------- merge


@dataclass
class MergeReport:
    """What a merge read and wrote. ``duplicates``: lines dropped as repeats of an id
    already written; ``superseded``: error lines dropped as the id succeeded somewhere."""

    files: int = 0
    lines: int = 0
    successes: int = 0
    errors: int = 0
    duplicates: int = 0
    superseded: int = 0
    skipped: int = 0


def _check_paths(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    read = {path.resolve() for path in inputs}
    for path in outputs:
        if path.resolve() in read:
            raise ConfigurationError(
                f"{path} is both read and written by the merge. "
                "HINT: write the merge to a new file, e.g. -o merged.jsonl"
            )
    for path in inputs:
        if not path.is_file():
            raise ConfigurationError(f"{path}: no such file. HINT: check the shard output paths")


def merge_outputs(inputs: Sequence[StrPath], *, output: StrPath, errors: StrPath) -> MergeReport:
    """Merge the result files ``inputs`` into ``output`` and ``errors`` (see the module)."""
    paths = list(dict.fromkeys(Path(path) for path in inputs))
    output_path, errors_path = Path(output), Path(errors)
    _check_paths(paths, [output_path, errors_path])

    # Pass 1: the ids that succeeded somewhere, and those that failed.
    succeeded_unsorted, failed_unsorted = array("q"), array("q")
    for custom_id, ok, _raw in _result_lines(paths, _Scan()):
        (succeeded_unsorted if ok else failed_unsorted).append(hash(custom_id))
    succeeded = _HashSet(succeeded_unsorted)
    failed = _HashSet(failed_unsorted)
    del succeeded_unsorted, failed_unsorted
    # Only ids met more than once need remembering as written: normally few.
    written: set[int] = set()

    report = MergeReport(files=len(paths))
    scan = _Scan()
    output_tmp = output_path.with_name(output_path.name + ".merging")
    errors_tmp = errors_path.with_name(errors_path.name + ".merging")
    with open(output_tmp, "wb") as out, open(errors_tmp, "wb") as err:
        # Pass 2: copy the lines that stay, byte for byte.
        for custom_id, ok, raw in _result_lines(paths, scan):
            value = hash(custom_id)
            if not ok and value in succeeded:
                report.superseded += 1
                continue
            if value in (succeeded if ok else failed).repeated:
                if value in written:
                    report.duplicates += 1
                    continue
                written.add(value)
            if ok:
                out.write(raw)
                report.successes += 1
            else:
                err.write(raw)
                report.errors += 1
        for file in (out, err):
            file.flush()
            os.fsync(file.fileno())
    os.replace(output_tmp, output_path)
    os.replace(errors_tmp, errors_path)
    report.lines, report.skipped = scan.lines, scan.skipped
    return report


# --------------------------------------------------------------------------- missing


@dataclass
class MissingReport:
    """The INPUT ids without a success: ``failed`` have an error line, ``unattempted``
    none at all. ``shown`` names the first few (``MISSING_SHOWN``)."""

    requests: int = 0
    missing: int = 0
    failed: int = 0
    unattempted: int = 0
    unreadable: int = 0
    shown: list[str] = field(default_factory=list)


def _ids_of(path: Path, *, successes: bool) -> _HashSet:
    values = array("q")
    if path.exists():
        for custom_id, ok, _raw in _result_lines([path], _Scan()):
            if ok is successes:
                values.append(hash(custom_id))
    return _HashSet(values)


def missing_ids(input_path: StrPath, *, output: StrPath, errors: StrPath) -> MissingReport:
    """Which ``custom_id`` values of the Batch-format ``input_path`` have no success line
    in ``output``, telling failed ones (in ``errors``) from never attempted ones."""
    succeeded = _ids_of(Path(output), successes=True)
    failed = _ids_of(Path(errors), successes=False)
    report = MissingReport()
    with open(input_path, "rb", buffering=_READ_BUFFER) as file:
        for raw in file:
            if raw.isspace():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = None
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or not custom_id:
                report.unreadable += 1
                continue
            report.requests += 1
            value = hash(custom_id)
            if value in succeeded:
                continue
            report.missing += 1
            if value in failed:
                report.failed += 1
            else:
                report.unattempted += 1
            if len(report.shown) < MISSING_SHOWN:
                report.shown.append(custom_id)
    return report
