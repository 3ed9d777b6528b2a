"""Merging a batch's output and error files into OUTPUT and ERRORS.

The files arrive in the service's order (not INPUT's) and are read line by
line from disk, never whole. Each line becomes a :class:`Result` written by
the same :class:`ResultWriter` as real-time mode, so OUTPUT and ERRORS hold
the same shapes whichever mode produced a line:

- an output line (2xx) -> a success in OUTPUT, unless OUTPUT already holds
  that ``custom_id`` (a real-time run, or an earlier merge cut short by a
  crash, delivered it first): then it is skipped;
- an error line with an HTTP response -> a failure in ERRORS;
- an error line ``batch_expired`` / ``batch_cancelled`` -> nothing written:
  the line was never run and is sent again (``left``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ratelane._core.config import Price
from ratelane._core.models import ErrorInfo, Result, RunStats, Usage

from .checkpoint import ResultWriter

__all__ = ["NOT_RUN_CODES", "MergeCounts", "Merger"]

logger = logging.getLogger(__name__)

#: Error-file codes of lines the batch never ran: they are sent again, not failures.
NOT_RUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
_READ_BUFFER = 1 << 20


@dataclass(slots=True)
class MergeCounts:
    delivered: int = 0
    failed: int = 0
    left: int = 0
    duplicates: int = 0


def _error_of(line: Mapping[str, Any], body: Any) -> ErrorInfo:
    envelope = body.get("error") if isinstance(body, dict) else None
    error = envelope if isinstance(envelope, dict) else line.get("error")
    if not isinstance(error, dict):
        return ErrorInfo(None, "the batch reported a failure without an error")
    code = error.get("code")
    return ErrorInfo(
        None if code is None else str(code),
        str(error.get("message") or ""),
        error.get("type") if isinstance(error.get("type"), str) else None,
        error.get("param") if isinstance(error.get("param"), str) else None,
    )


class Merger:
    """Writes batch result lines through ``writer``; remembers ids written and failed.

    ``done(custom_id)`` says whether OUTPUT already held the id before this
    run; ids written or failed during the run are kept as Python hashes
    (a few dozen bytes each), enough to skip repeats and to leave failures
    out of a resubmission.
    """

    def __init__(
        self,
        writer: ResultWriter,
        stats: RunStats,
        *,
        done: Callable[[str], bool],
        price_of: Callable[[str | None], Price | None],
    ) -> None:
        self._writer = writer
        self._stats = stats
        self._done = done
        self._price_of = price_of
        self.written: set[int] = set()
        self.failed: set[int] = set()

    def has_success(self, custom_id: str) -> bool:
        return hash(custom_id) in self.written or self._done(custom_id)

    def settled(self, custom_id: str) -> bool:
        """A success in OUTPUT, or a permanent failure in this run: not to be sent again."""
        return hash(custom_id) in self.failed or self.has_success(custom_id)

    def fail(self, result: Result) -> None:
        """Write one failure (for lines a failed validation names) unless it has a success."""
        if self.has_success(result.custom_id) or hash(result.custom_id) in self.failed:
            return
        self._writer.append(result)
        self.failed.add(hash(result.custom_id))
        self._stats.failed += 1
        self._stats.attempts += result.attempts

    def merge(self, path: Path, *, url: str, model: str | None) -> MergeCounts:
        """Merge one downloaded output or error file; return what it held."""
        counts = MergeCounts()
        price = self._price_of(model)
        with open(path, "rb", buffering=_READ_BUFFER) as lines:
            for raw in lines:
                if raw.isspace():
                    continue
                try:
                    line = orjson.loads(raw)
                    custom_id = line["custom_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s: skipped a line that is not a batch result", path.name)
                    continue
                self._merge_line(line, custom_id, counts, url=url, price=price)
            self._writer.sync_if_due()
        return counts

    def _merge_line(
        self,
        line: dict[str, Any],
        custom_id: str,
        counts: MergeCounts,
        *,
        url: str,
        price: Price | None,
    ) -> None:
        if self.has_success(custom_id):
            counts.duplicates += 1
            return
        response = line.get("response")
        error = line.get("error")
        if not isinstance(response, dict):
            code = error.get("code") if isinstance(error, dict) else None
            if code in NOT_RUN_CODES:
                counts.left += 1
                return
            self.fail(
                Result(
                    index=0,
                    custom_id=custom_id,
                    ok=False,
                    error=_error_of(line, None),
                    attempts=1,
                    path=url,
                )
            )
            counts.failed += 1
            return
        status = response.get("status_code")
        body = response.get("body")
        request_id = response.get("request_id")
        request_id = request_id if isinstance(request_id, str) else None
        ok = error is None and type(status) is int and 200 <= status < 300
        if not ok:
            self.fail(
                Result(
                    index=0,
                    custom_id=custom_id,
                    ok=False,
                    status_code=status if type(status) is int else None,
                    raw_body=None if body is None else orjson.dumps(body),
                    error=_error_of(line, body),
                    request_id=request_id,
                    attempts=1,
                    path=url,
                )
            )
            counts.failed += 1
            return
        usage = Usage.from_body(body)
        self._writer.append(
            Result(
                index=0,
                custom_id=custom_id,
                ok=True,
                status_code=status,
                raw_body=orjson.dumps(body),
                request_id=request_id,
                attempts=1,
                usage=usage,
                path=url,
            )
        )
        self.written.add(hash(custom_id))
        counts.delivered += 1
        stats = self._stats
        stats.succeeded += 1
        stats.attempts += 1
        if usage is not None:
            stats.count_usage(usage, price)
