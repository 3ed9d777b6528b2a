"""Batches of the fake Batch API: the status machine, run as one task per batch.

::

    validating --(line errors, or the enqueued-token pool is full)--> failed
        |
        v
    in_progress --(every line answered)--> finalizing --> completed
        |   \\--(expire_after_lines reached, or forced expiry)--> expired
        \\--(POST .../cancel)--> cancelling --> cancelled

Lines are answered in a seeded random order, which is also the order of the
output file. Each line goes through ``answer`` (the same checks and bodies as
the real-time endpoints, without rate limits or faults): a 2xx goes to the
output file, any other status to the error file with ``error: null``. Lines
never answered go to the error file with ``response: null`` and
``error.code`` ``batch_expired`` or ``batch_cancelled``. ``request_counts``
moves as lines are answered; ``completed`` counts output lines and ``failed``
error lines.

Enqueued tokens (estimated input tokens) count against the per-model pool
from the end of validation until the batch leaves ``in_progress``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from ratelane._core.tokens import estimate_input_tokens

from ._batch_lines import Scan, scan_input
from ._batch_options import BatchOptions
from ._files_store import FileStore, StoredFile

__all__ = ["Answer", "Batch", "BatchCreation", "Batches", "Upload"]

#: ``answer(url, body) -> (status, payload, output_tokens)`` for one input line.
Answer = Callable[[str, Any], tuple[int, bytes, int]]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Statuses whose tokens count against the enqueued-token pool.
_ENQUEUED = frozenset({"in_progress", "cancelling"})
_WINDOW_S = 24 * 3600
#: Lines answered between two pacing pauses (also a yield to the server's other work).
_MAX_STEP = 256

_STOP_ERRORS = {
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancelled": (
        "batch_cancelled",
        "This request was not executed because the batch was cancelled.",
    ),
}


@dataclass(frozen=True, slots=True)
class Upload:
    """One ``POST /v1/files`` the server accepted."""

    file_id: str
    filename: str
    purpose: str
    bytes: int
    digest: str


@dataclass(frozen=True, slots=True)
class BatchCreation:
    """One ``POST /v1/batches`` the server accepted."""

    batch_id: str
    input_file_id: str
    endpoint: str
    input_digest: str


@dataclass(slots=True)
class Batch:
    """One batch's state; :meth:`wire` is the Batch object."""

    id: str
    endpoint: str
    input_file: StoredFile
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int | None] = field(default_factory=dict)
    #: Every status taken, in order (tests assert the exact progression here).
    history: list[str] = field(default_factory=lambda: ["validating"])
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    enqueued_tokens: int = 0
    stop: str | None = None  # "expired" or "cancelled", once asked for
    task: asyncio.Task[None] | None = None
    #: Set with ``stop``, so a batch pacing its lines wakes at once.
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stopping(self) -> bool:
        """An expiry or a cancel was asked for (it may change while the batch awaits)."""
        return self.stop is not None

    def mark(self, status: str) -> None:
        self.status = status
        self.history.append(status)
        self.times[f"{status}_at"] = int(time.time())

    def wire(self) -> dict[str, Any]:
        times = self.times
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file.id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": times.get("in_progress_at"),
            "expires_at": self.created_at + _WINDOW_S,
            "finalizing_at": times.get("finalizing_at"),
            "completed_at": times.get("completed_at"),
            "failed_at": times.get("failed_at"),
            "expired_at": times.get("expired_at"),
            "cancelling_at": times.get("cancelling_at"),
            "cancelled_at": times.get("cancelled_at"),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }


class _Results:
    """The output and error files of one batch, opened lazily, adopted into the store."""

    def __init__(self, files: FileStore, batch: Batch, new_id: Callable[[], str]) -> None:
        self._files = files
        self._batch = batch
        self._new_id = new_id
        self._out: BinaryIO | None = None
        self._err: BinaryIO | None = None

    def write(self, line: bytes, *, ok: bool) -> None:
        if ok:
            if self._out is None:
                self._out = self._files.new_path(f"{self._batch.id}_output.jsonl").open("wb")
            self._out.write(line)
        else:
            if self._err is None:
                self._err = self._files.new_path(f"{self._batch.id}_error.jsonl").open("wb")
            self._err.write(line)

    def close(self, *, publish: bool) -> None:
        batch = self._batch
        for handle, kind in ((self._out, "output"), (self._err, "error")):
            if handle is None:
                continue
            handle.close()
            if not publish:
                continue
            stored = self._files.adopt(
                self._files.new_path(f"{batch.id}_{kind}.jsonl"),
                file_id=self._new_id(),
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
            )
            if kind == "output":
                batch.output_file_id = stored.id
            else:
                batch.error_file_id = stored.id
        self._out = self._err = None


class Batches:
    """Every batch of one server, with the record of uploads and creations."""

    def __init__(
        self,
        options: BatchOptions,
        files: FileStore,
        answer: Answer,
        *,
        seed: int,
        organization: str,
    ) -> None:
        self.options = options
        self.files = files
        self._answer = answer
        self._organization = organization
        self._random = random.Random(f"batches-{seed}")
        self._batches: dict[str, Batch] = {}
        #: Every accepted upload and batch creation, oldest first (for "nothing twice").
        self.uploads: list[Upload] = []
        self.creations: list[BatchCreation] = []

    def __repr__(self) -> str:
        return f"Batches(batches={len(self._batches)}, uploads={len(self.uploads)})"

    # -- ids -------------------------------------------------------------------

    def file_id(self) -> str:
        return f"file-{self._random.getrandbits(96):024x}"

    def _batch_id(self) -> str:
        return f"batch_{self._random.getrandbits(128):032x}"

    def _line_ids(self) -> tuple[str, str]:
        bits = self._random.getrandbits
        return f"batch_req_{bits(128):032x}", f"req_{bits(128):032x}"

    # -- queries ---------------------------------------------------------------

    def get(self, batch_id: str) -> Batch | None:
        return self._batches.get(batch_id)

    def newest_first(self) -> list[Batch]:
        return list(reversed(self._batches.values()))

    def enqueued_tokens(self, model: str) -> int:
        return sum(
            b.enqueued_tokens
            for b in self._batches.values()
            if b.model == model and b.status in _ENQUEUED
        )

    # -- commands ----------------------------------------------------------------

    def record_upload(self, stored: StoredFile) -> None:
        self.uploads.append(
            Upload(stored.id, stored.filename, stored.purpose, stored.bytes, stored.digest)
        )

    def create(
        self, input_file: StoredFile, endpoint: str, metadata: dict[str, str] | None
    ) -> Batch:
        batch = Batch(self._batch_id(), endpoint, input_file, metadata, int(time.time()))
        self._batches[batch.id] = batch
        self.creations.append(BatchCreation(batch.id, input_file.id, endpoint, input_file.digest))
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        return batch

    def cancel(self, batch: Batch) -> None:
        if batch.status in ("validating", "in_progress"):
            batch.stop = "cancelled"
            batch.stopped.set()
            batch.mark("cancelling")

    def expire(self, batch: Batch) -> None:
        if batch.status not in TERMINAL and batch.stop is None:
            batch.stop = "expired"
            batch.stopped.set()

    async def aclose(self) -> None:
        tasks = [b.task for b in self._batches.values() if b.task is not None and not b.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.files.close()

    # -- the status machine ------------------------------------------------------

    async def _run(self, batch: Batch) -> None:
        try:
            await self._advance(batch)
        except Exception as exc:  # a fake-server bug: show it on the batch, not in a lost task
            batch.errors = [
                {
                    "code": "server_error",
                    "message": f"fake server: {exc!r}",
                    "param": None,
                    "line": None,
                }
            ]
            batch.mark("failed")
            raise

    async def _advance(self, batch: Batch) -> None:
        options = self.options
        await _pause(batch, options.seconds("validating_s"))
        if batch.stopping():  # cancelled while validating: nothing was read
            await self._stop(batch, None)
            return
        scan = await asyncio.to_thread(
            scan_input,
            batch.input_file.path,
            endpoint=batch.endpoint,
            max_lines=options.max_lines,
            max_bytes=options.max_bytes,
        )
        batch.model = scan.model
        if not scan.errors:
            self._check_pool(batch, scan)
        if scan.errors:
            batch.errors = scan.errors
            batch.mark("failed")
            return
        batch.total = scan.lines
        batch.enqueued_tokens = scan.input_tokens
        if not batch.stopping():
            batch.mark("in_progress")
        order = list(range(scan.lines))
        if options.shuffle:
            self._random.shuffle(order)
        results = _Results(self.files, batch, self.file_id)
        # One handle for the whole run: deleting the input file cannot break a running batch.
        with batch.input_file.path.open("rb") as source:
            try:
                left = await self._answer_lines(batch, _Lines(source, scan), order, results)
                if not batch.stopping():
                    batch.enqueued_tokens = 0
                    batch.mark("finalizing")
                    await asyncio.sleep(options.seconds("finalizing_s"))
                    results.close(publish=True)
                    batch.mark("completed")
                else:
                    await self._stop(batch, results, _Lines(source, scan), left)
            finally:
                results.close(publish=False)

    def _check_pool(self, batch: Batch, scan: Scan) -> None:
        model = scan.model
        assert model is not None  # a scan without errors found at least one line
        limit = self.options.token_limit(model)
        if limit is None or self.enqueued_tokens(model) + scan.input_tokens <= limit:
            return
        scan.errors.append(
            {
                "code": "token_limit_exceeded",
                "message": (
                    f"Enqueued token limit reached for {model} in organization "
                    f"{self._organization}. Limit: {limit:,} enqueued tokens. Please try again "
                    "once some in_progress batches have been completed."
                ),
                "param": None,
                "line": None,
            }
        )

    async def _answer_lines(
        self, batch: Batch, lines: _Lines, order: list[int], results: _Results
    ) -> list[int]:
        """Answer lines in ``order`` until done or stopped; return the unanswered ones."""
        loop = asyncio.get_running_loop()
        total = len(order)
        started = loop.time()
        duration = self.options.seconds("in_progress_s")
        step = max(1, min(_MAX_STEP, total // 20))
        expire_after = self.options.expire_after_lines
        for done, index in enumerate(order):
            if expire_after is not None and done >= expire_after and batch.stop is None:
                batch.stop = "expired"
            if batch.stop is not None:
                return order[done:]
            self._answer_one(batch, lines.read(index), results)
            if (done + 1) % step == 0:
                wake = started + duration * (done + 1) / total
                await _pause(batch, wake - loop.time())
        return []

    def _answer_one(self, batch: Batch, raw: bytes, results: _Results) -> None:
        line = orjson.loads(raw)
        body = line["body"]
        status, payload, output_tokens = self._answer(batch.endpoint, body)
        line_id, request_id = self._line_ids()
        ok = 200 <= status < 300
        out = (
            b'{"id":"%s","custom_id":%s,"response":{"status_code":%d,"request_id":"%s","body":%s},'
            b'"error":null}\n'
            % (
                line_id.encode(),
                orjson.dumps(line["custom_id"]),
                status,
                request_id.encode(),
                payload,
            )
        )
        results.write(out, ok=ok)
        if ok:
            batch.completed += 1
            batch.input_tokens += estimate_input_tokens(body)
            batch.output_tokens += output_tokens
        else:
            batch.failed += 1

    async def _stop(
        self,
        batch: Batch,
        results: _Results | None,
        lines: _Lines | None = None,
        left: list[int] | None = None,
    ) -> None:
        """Finish a batch that was expired or cancelled: the unanswered lines become errors."""
        reason = batch.stop
        assert reason is not None
        if reason == "cancelled":
            await asyncio.sleep(self.options.seconds("cancelling_s"))
        if results is not None:
            code, message = _STOP_ERRORS[reason]
            for index in left if lines is not None and left else ():
                assert lines is not None
                line_id, _ = self._line_ids()
                error = {"code": code, "message": message}
                custom_id = orjson.loads(lines.read(index))["custom_id"]
                row = {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
                results.write(orjson.dumps(row) + b"\n", ok=False)
                batch.failed += 1
            results.close(publish=True)
        batch.enqueued_tokens = 0
        batch.mark(reason)


class _Lines:
    """Random access to the request lines of a validated input file."""

    def __init__(self, source: BinaryIO, scan: Scan) -> None:
        self._source = source
        self._offsets = scan.offsets

    def read(self, index: int) -> bytes:
        self._source.seek(self._offsets[index])
        return self._source.readline()


async def _pause(batch: Batch, delay_s: float) -> None:
    """Sleep ``delay_s`` (at least yield to the loop), cut short by a cancel or expiry."""
    if delay_s <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(batch.stopped.wait(), delay_s)
