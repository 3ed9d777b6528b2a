"""Checkpoint files: OUTPUT and ERRORS writing, torn-line repair, resume, the lock.

OUTPUT holds one Batch-format line per *successful* request and is only ever
appended to, so it doubles as the checkpoint: on restart, :class:`DoneSet`
reads the ``custom_id`` of every success line and those requests are skipped.
ERRORS is truncated at the start of every run: failures are never "done", so
each one is sent again on resume, and ERRORS describes the latest run only.

Crash safety: each line goes out as a single ``os.write`` of the complete
line including its newline, so a crash can tear at most the last line;
:func:`repair_torn_tail` cuts such a line away before appending again, and
:class:`DoneSet` never reads a line without its newline as a result. Both
files are ``fsync``-ed every ``fsync_interval_s`` and on close.

Line shapes (OpenAI Batch output, protocol reference section 6.6)::

    {"id": "batch_req_<hex>", "custom_id": "...",
     "response": {"status_code": 200, "request_id": "req_...", "body": {...}},
     "error": null, "ratelane": {"attempts": 1, "latency_s": 0.42, "dropped_params": []}}

A failure has ``"error": {"code", "message"}`` and ``"response"`` set to the
last HTTP response when there was one, else ``null``.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import re
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from ratelane._core.errors import ConfigurationError, OutputLockedError
from ratelane._core.models import Result

from .input import int64_hash_function, iter_sorted_int64

__all__ = [
    "DoneSet",
    "OutputLock",
    "ResultWriter",
    "failure_line",
    "repair_torn_tail",
    "success_line",
]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

_BLOCK = 1 << 16
_READ_BUFFER = 1 << 20
_WHITESPACE = b" \t\r\n\x0b\x0c"
_DUMP_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


# --------------------------------------------------------------------------- line shapes


# Line ids have the Batch API's shape, ``batch_req_`` and 32 hex digits: 80 random
# bits per process, then a counter. Unique like uuid4 (~4 us a line) at ~0.4 us.
_LINE_ID_PREFIX = ""
_line_numbers = itertools.count()


def _reseed_line_ids() -> None:
    """A fresh random prefix (at import, and in a forked child, which must not share it)."""
    global _LINE_ID_PREFIX, _line_numbers
    _LINE_ID_PREFIX = "batch_req_" + os.urandom(10).hex()
    _line_numbers = itertools.count()


_reseed_line_ids()
os.register_at_fork(after_in_child=_reseed_line_ids)


def _new_line_id() -> str:
    return f"{_LINE_ID_PREFIX}{next(_line_numbers):012x}"


def _dump(line: dict[str, Any]) -> bytes:
    return orjson.dumps(line, default=str, option=_DUMP_OPTIONS)


def _ratelane_extra(result: Result) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "attempts": result.attempts,
        "latency_s": round(result.latency_s, 6),
        "dropped_params": list(result.dropped_params),
    }
    header = result.request_id_header
    if header is not None and header != "x-request-id":
        # Behind a gateway the id is the proxy's own: say which header it came from.
        extra["request_id_header"] = header
    if result.cached:  # answered from the response cache, not sent (issue 14)
        extra["cached"] = True
    return extra


def _raw_json(result: Result) -> Any:
    raw = result.raw_body
    if raw is None:
        return None
    # find(), not "in": bytes.__contains__ first tries its argument as an int and
    # formats a TypeError for every line (two per line: 1% of a request's CPU).
    if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:
        # Pretty-printed JSON (some compatible servers) would break the line: re-encode.
        return result.body
    # The server's compact bytes go into the line as they came: no parse, no re-encode.
    return orjson.Fragment(raw)


def success_line(result: Result, *, line_id: str | None = None) -> bytes:
    """The OUTPUT line for a successful result, newline included.

    ``line_id`` defaults to a fresh ``batch_req_<32 hex>``.
    """
    if not result.ok:
        raise ValueError(f"result {result.custom_id!r} failed; write it with failure_line()")
    return _dump(
        {
            "id": line_id or _new_line_id(),
            "custom_id": result.custom_id,
            "response": {
                "status_code": result.status_code,
                "request_id": result.request_id,
                "body": _raw_json(result),
            },
            "error": None,
            "ratelane": _ratelane_extra(result),
        }
    )


def failure_line(result: Result, *, line_id: str | None = None) -> bytes:
    """The ERRORS line for a failed result, newline included.

    ``response`` is the last HTTP response (status, request id, error body)
    when there was one, else ``null`` (connection errors, timeouts).
    """
    if result.ok:
        raise ValueError(f"result {result.custom_id!r} succeeded; write it with success_line()")
    error = result.error
    response = None
    if result.status_code is not None:
        response = {
            "status_code": result.status_code,
            "request_id": result.request_id,
            "body": _raw_json(result),
        }
    return _dump(
        {
            "id": line_id or _new_line_id(),
            "custom_id": result.custom_id,
            "response": response,
            "error": {
                "code": error.code if error else None,
                "message": error.message if error else "the request failed without an error",
            },
            "ratelane": _ratelane_extra(result),
        }
    )


# --------------------------------------------------------------------------- torn tail


def _rfind_newline(fd: int, stop: int) -> int:
    """Offset of the last ``\\n`` before ``stop``, or -1."""
    position = stop
    while position > 0:
        start = max(0, position - _BLOCK)
        found = os.pread(fd, position - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def _last_non_space(fd: int, stop: int) -> int:
    """Offset of the last non-whitespace byte before ``stop``, or -1."""
    position = stop
    while position > 0:
        start = max(0, position - _BLOCK)
        kept = len(os.pread(fd, position - start, start).rstrip(_WHITESPACE))
        if kept:
            return start + kept - 1
        position = start
    return -1


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def repair_torn_tail(path: StrPath) -> int:
    """Cut an incomplete last line off ``path``; return the bytes removed.

    A last line without its newline (a crash mid-write) is removed, even if
    it happens to parse: it is never treated as a result, and the request is
    simply sent again. Then, if the last non-blank line is not valid JSON, it
    is removed too. Earlier lines are never read: the file is scanned
    backwards from the end, so this is cheap on any size. A missing file is
    fine (0).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        end = size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            end = _rfind_newline(fd, size) + 1
        last = _last_non_space(fd, end)
        if last >= 0:
            start = _rfind_newline(fd, last) + 1
            if not _is_json(os.pread(fd, last + 1 - start, start)):
                end = start
        if end < size:
            os.ftruncate(fd, end)
            os.fsync(fd)
            logger.warning(
                "%s: removed %d bytes of an incomplete last line left by an interrupted run",
                os.fspath(path),
                size - end,
            )
        return size - end
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- resume


# The exact bytes success_line() writes: the keys in this order, compact. A line
# that matches is read without parsing its (large) body; anything else is parsed.
_SUCCESS_HEAD = re.compile(
    rb'\{"id":"batch_req_[0-9a-f]*","custom_id":"([^"\\]+)","response":\{"status_code":2\d\d,'
)
_SUCCESS_TAIL = b',"error":null,"ratelane":{"attempts":'


def _fast_success_id(raw: bytes) -> str | None:
    """``custom_id`` of a success line in ratelane's own layout, else ``None`` (parse it)."""
    head = _SUCCESS_HEAD.match(raw)
    if head is None:
        return None
    # Quotes inside JSON strings are escaped, so the last unescaped '"error":' key
    # is the top-level one; the body before it cannot fake this tail.
    tail = raw.rfind(b',"error":')
    if tail < 0 or not raw.startswith(_SUCCESS_TAIL, tail) or raw.find(b'"error"', tail + 9) >= 0:
        return None
    try:
        return head.group(1).decode()
    except UnicodeDecodeError:
        return None


def _success_ids(path: StrPath, start: int = 0) -> Iterator[str]:
    """``custom_id`` of each success line from byte ``start`` (a line start) on:
    ``"error": null`` and a 2xx status."""
    try:
        file = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    unreadable = 0
    with file:
        file.seek(start)
        for raw in file:
            if not raw.endswith(b"\n"):
                break  # a torn last line is never a result
            custom_id = _fast_success_id(raw)
            if custom_id is not None:
                yield custom_id
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                unreadable += 0 if raw.isspace() else 1
                continue
            if not isinstance(line, dict) or line.get("error") is not None:
                continue
            response = line.get("response")
            if not isinstance(response, dict):
                continue
            status = response.get("status_code")
            if type(status) is not int or not 200 <= status < 300:
                continue
            custom_id = line.get("custom_id")
            if isinstance(custom_id, str) and custom_id:
                yield custom_id
    if unreadable:
        logger.warning("%s: ignored %d lines that are not JSON", os.fspath(path), unreadable)


_BIAS = 1 << 63  # int64 -> 0 .. 2**64 - 1, so the top bits order like the values


class DoneSet:
    """The ``custom_id`` values already completed, as 64-bit hashes.

    Held as a sorted ``array('q')`` (8 bytes an id), built by sorting in
    chunks and merging, so no Python set or list of all the ids ever exists;
    ``in`` is a binary search. ``hash_function`` defaults to Python's
    ``hash()``, which is randomised per process: build and query a DoneSet in
    the same process.

    A hash collision would make an unfinished id look done. With ``n`` done
    ids and ``m`` ids looked up, the chance is about ``n * m / 2**64``: for
    ten million of each, about 5 in a million.
    """

    __slots__ = ("_hash_function", "_hashes", "_shift", "_starts")

    def __init__(
        self, custom_ids: Iterable[str] = (), *, hash_function: Callable[[str], int] = hash
    ) -> None:
        hash_of = int64_hash_function(hash_function)
        collected = array("q", map(hash_of, custom_ids))
        # Sorted, each value once; groupby/itemgetter keep the loop in C.
        hashes = array("q", map(itemgetter(0), groupby(iter_sorted_int64(collected))))
        self._hashes = hashes
        self._hash_function = hash_of
        # A bucket index over the top bits (hashes are uniform): ``in`` then
        # bisects ~16-32 values instead of all of them. Under 1 byte an id.
        bits = max(0, (len(hashes) // 16).bit_length())
        self._shift = 64 - bits
        self._starts = array(
            "q",
            (bisect_left(hashes, (bucket << self._shift) - _BIAS) for bucket in range(1 << bits)),
        )
        self._starts.append(len(hashes))

    @classmethod
    def from_output(
        cls, path: StrPath, *, start: int = 0, hash_function: Callable[[str], int] = hash
    ) -> DoneSet:
        """The successes recorded in OUTPUT (from byte ``start``, a line start, on);
        empty if the file does not exist yet."""
        return cls(_success_ids(path, start), hash_function=hash_function)

    def __contains__(self, custom_id: object) -> bool:
        if not isinstance(custom_id, str):
            return False
        value = self._hash_function(custom_id)
        bucket = (value + _BIAS) >> self._shift
        starts = self._starts
        stop = starts[bucket + 1]
        index = bisect_left(self._hashes, value, starts[bucket], stop)
        return index < stop and self._hashes[index] == value

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"<DoneSet size={len(self):,}>"


# --------------------------------------------------------------------------- lock


class OutputLock:
    """Exclusive lock on ``<output>.lock`` so two runs never append to one OUTPUT.

    ``fcntl.flock`` (POSIX only), non-blocking; the holder's pid is written
    into the lock file for the error message. The kernel drops the lock when
    the process dies, so a crash never leaves a stale lock; the file itself
    stays behind, harmless (deleting it would let two runs lock different
    files under the same name). Locks are per open file description: a second
    ``OutputLock`` on the same output fails even in the same process.
    """

    __slots__ = ("_fd", "_lock_path", "_output_path")

    def __init__(self, output_path: StrPath) -> None:
        self._output_path = Path(output_path)
        self._lock_path = Path(os.fspath(output_path) + ".lock")
        self._fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self._lock_path

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputLockedError` at once."""
        if self._fd is not None:
            raise RuntimeError(f"{self!r} is already held")
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputLockedError(
                f"{self._output_path} is being written by another ratelane run{who}, which "
                f"holds {self._lock_path}. HINT: wait for that run to finish or stop it, "
                "or write to a different output file."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.locked else "free"
        return f"<OutputLock {str(self._lock_path)!r} {state}>"


# --------------------------------------------------------------------------- writer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ResultWriter:
    """Appends each result to OUTPUT (successes) or ERRORS (failures).

    On open, OUTPUT's torn last line, if any, is repaired and the file opened
    for appending; ERRORS is truncated, because every earlier failure is sent
    again on resume and ERRORS describes the latest run. Each line is one
    ``os.write`` (no user-space buffer to flush); both files are fsync-ed
    when ``fsync_interval_s`` has passed since the last fsync (0: after every
    line) and on :meth:`close`, each time followed by ``on_sync(output_size)``
    (the resume marker's hook). Hold an :class:`OutputLock` while writing.

    Inside an event loop, :meth:`append_soon` defers the write to the end of
    the loop's current pass, so the lines of every result that arrived in one
    pass go out in one ``os.write`` (one system call, not one per line).
    """

    __slots__ = (
        "_clock",
        "_errors_fd",
        "_flush_error",
        "_flush_scheduled",
        "_fsync_interval_s",
        "_last_fsync",
        "_on_sync",
        "_output_fd",
        "_unwritten_errors",
        "_unwritten_output",
        "errors_path",
        "failed",
        "output_path",
        "output_size",
        "repaired_bytes",
        "succeeded",
    )

    def __init__(
        self,
        output_path: StrPath,
        errors_path: StrPath,
        *,
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_sync: Callable[[int], None] | None = None,
    ) -> None:
        if not fsync_interval_s >= 0:
            raise ConfigurationError(
                f"fsync_interval_s must be 0 or more seconds, got {fsync_interval_s}"
            )
        if os.path.realpath(output_path) == os.path.realpath(errors_path):
            raise ConfigurationError(
                f"the errors file must differ from the output file ({os.fspath(output_path)}); "
                "HINT: pass another path for errors, e.g. errors.jsonl"
            )
        self.output_path = Path(output_path)
        self.errors_path = Path(errors_path)
        self._fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._on_sync = on_sync
        self.repaired_bytes = repair_torn_tail(output_path)
        self._output_fd: int | None = os.open(
            output_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        try:
            self._errors_fd: int | None = os.open(
                errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644
            )
        except BaseException:
            os.close(self._output_fd)
            raise
        self._last_fsync = clock()
        # Lines held, not written yet; a flush is scheduled for append_soon's.
        self._unwritten_output: list[bytes] = []
        self._unwritten_errors: list[bytes] = []
        self._flush_scheduled = False
        self._flush_error: OSError | None = None
        #: OUTPUT's length in bytes: where the next success line goes.
        self.output_size = os.fstat(self._output_fd).st_size
        self.succeeded = 0
        self.failed = 0

    @property
    def closed(self) -> bool:
        return self._output_fd is None

    def write(self, result: Result) -> None:
        """Append one result's line; fsync both files if the interval has passed."""
        self.append(result)
        self.sync_if_due()

    def append(self, result: Result) -> int:
        """Append one result's line without syncing; return OUTPUT's offset of a
        success line (``-1`` for a failure, which goes to ERRORS)."""
        offset = self._hold(result)
        self.flush()  # with any lines append_soon holds, in the order of their offsets
        return offset

    def append_soon(self, result: Result) -> int:
        """:meth:`append`, written at the end of this pass of the running event loop.

        A kill -9 before then loses these lines from OUTPUT: they are sent again
        on resume, never written twice (the resume marker only ever records a
        size after :meth:`flush`). A write error is raised by the next call.
        """
        offset = self._hold(result)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_in_loop)
        return offset

    def _hold(self, result: Result) -> int:
        """Build the result's line and give it its place; :meth:`flush` writes it."""
        if self._output_fd is None:
            raise ValueError(f"{self!r} is closed")
        if self._flush_error is not None:
            raise self._flush_error
        if result.ok:
            line = success_line(result)
            self._unwritten_output.append(line)
            offset = self.output_size
            self.output_size = offset + len(line)
            self.succeeded += 1
            return offset
        self._unwritten_errors.append(failure_line(result))
        self.failed += 1
        return -1

    def flush(self) -> None:
        """Write the lines held so far (append_soon's are written at the end of the pass)."""
        if self._flush_error is not None:
            raise self._flush_error
        if self._output_fd is None or self._errors_fd is None:
            return
        output, errors = self._unwritten_output, self._unwritten_errors
        if output:
            self._unwritten_output = []
            _write_all(self._output_fd, b"".join(output))
        if errors:
            self._unwritten_errors = []
            _write_all(self._errors_fd, b"".join(errors))

    def _flush_in_loop(self) -> None:
        self._flush_scheduled = False
        try:
            self.flush()
        except OSError as error:  # raised where it can be handled: the next call
            self._flush_error = error

    def sync_if_due(self) -> None:
        """fsync both files if ``fsync_interval_s`` has passed since the last fsync."""
        if self._clock() - self._last_fsync >= self._fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        """fsync both files now, then call ``on_sync`` with OUTPUT's durable size."""
        if self._output_fd is None or self._errors_fd is None:
            return
        self.flush()
        os.fsync(self._output_fd)
        os.fsync(self._errors_fd)
        self._last_fsync = self._clock()
        if self._on_sync is not None:
            self._on_sync(self.output_size)

    def close(self) -> None:
        """fsync and close both files; calling it again does nothing."""
        if self._output_fd is None or self._errors_fd is None:
            return
        try:
            self.sync()
        finally:
            output_fd, errors_fd = self._output_fd, self._errors_fd
            self._output_fd = self._errors_fd = None
            try:
                os.close(output_fd)
            finally:
                os.close(errors_fd)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<ResultWriter {str(self.output_path)!r} {state} "
            f"succeeded={self.succeeded} failed={self.failed}>"
        )
