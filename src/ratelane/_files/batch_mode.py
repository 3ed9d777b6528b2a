"""Batch API mode of a file run (``via="batch"``): the same files at half the price.

:class:`FileRun` validates INPUT, takes OUTPUT's lock and opens the writer,
then hands over here. One loop, every step recorded in the sidecar
(``batch_state.py``) before the next, so a run killed anywhere re-attaches::

    re-attaching?       find uploads and batches a killed run made but did not
                        record (batch_uploads.py, GET /v1/files, GET /v1/batches)
    no unmerged chunk?  plan the lines without a success (batch_plan.py);
                        none left -> done. (With fallback="realtime", lines an
                        expired or cancelled batch left are sent in real time.)
    upload each planned chunk, create each uploaded chunk's batch
                        (kept under max_enqueued_tokens per model)
    detach?             return: the batches run on without us
    poll the unfinished batches (jittered backoff, batch_options.poll_delay);
    a finished one:     stream its files to disk, merge them (batch_merge.py)
        completed/expired/cancelled -> OUTPUT/ERRORS; lines never run go again
        failed, token_limit_exceeded -> created again once the pool has room
        failed validation -> ERRORS, each problem at its INPUT line

Nothing already successful in OUTPUT is uploaded, and a line OUTPUT already
holds is never written again, whoever delivers it (a real-time run on the same
OUTPUT, or a merge repeated after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from ratelane._api.operating import price_table
from ratelane._core.config import Price
from ratelane._core.errors import APIError, ConfigurationError, TransportError
from ratelane._core.models import ErrorInfo, Result, RunStats
from ratelane._core.prices import batch_price, price_for
from ratelane._http.batch_api import BatchAPI, BatchInfo, FilePage
from ratelane._http.transport import Transport
from ratelane._http.wire import DEFAULT_BASE_URL

from .batch_merge import Merger
from .batch_options import BatchRunOptions, poll_delay
from .batch_plan import ChunkLimits, plan_chunks
from .batch_state import BatchState, Chunk, chunk_directory
from .batch_uploads import find_uploads
from .checkpoint import DoneSet, ResultWriter
from .input import BatchLine, ValidationReport, iter_batch_requests

if TYPE_CHECKING:
    from .file_run import FileRun, FileRunOptions, FileRunSummary

__all__ = ["BatchMode", "batch_transport"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Batch statuses whose estimated input tokens count against the enqueued-token pool.
_ENQUEUED = frozenset({"validating", "in_progress", "cancelling"})
#: Statuses that are worth an API error's retry (the answer may differ next time).
_TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_CALL_ATTEMPTS = 8
_SHOWN_LINES = 10
#: Batches of one chunk that expire or are cancelled in a row, having run nothing, before
#: the run stops (a user's `batch cancel` counts once; a service that never runs it, more).
_MAX_BARREN = 3
#: Files a page when looking for unrecorded uploads (newest first: they are on the first).
_FILES_PAGE = 1000


def batch_transport(options: FileRunOptions) -> Transport:
    """A Transport for the Files and Batches endpoints, from a file run's options."""
    key = options.api_key if options.api_key is not None else os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigurationError(
            "no API key. HINT: set OPENAI_API_KEY or pass api_key=...; "
            "for offline testing use ratelane.testing.FakeOpenAI"
        )
    return Transport(
        base_url=options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        api_key=key,
        organization=options.organization or os.environ.get("OPENAI_ORG_ID"),
        project=options.project or os.environ.get("OPENAI_PROJECT_ID"),
        timeout_s=max(options.timeout_s, 600.0),  # a whole download of a large result file
        connect_timeout_s=options.connect_timeout_s,
        max_connections=8,
    )


class _Fatal(Exception):
    """An answer that stops the run: ``(reason, message, status)``."""

    def __init__(self, reason: str, message: str, status: int | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


def _shown(numbers: list[int]) -> str:
    text = ", ".join(str(n) for n in numbers[:_SHOWN_LINES])
    more = len(numbers) - _SHOWN_LINES
    return text + (f" and {more:,} more" if more > 0 else "")


class BatchMode:
    """One Batch API mode run, inside a :class:`FileRun` that holds the lock and the writer.

    ``sleep``, ``clock`` and ``rng`` are injected (tests run hours of polling in
    milliseconds).
    """

    def __init__(
        self,
        file_run: FileRun,
        writer: ResultWriter,
        report: ValidationReport,
        *,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._run = file_run
        self._writer = writer
        self._report = report
        options = file_run.options
        self._options = options
        self._batch: BatchRunOptions = options.batch or BatchRunOptions()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopped = False
        self._retry_at: dict[int, float] = {}
        self._quiet = 0  # polls in a row that saw nothing change
        self._barren: dict[int, int] = {}  # chunk key -> batches that ended having run nothing
        self.stats = RunStats()
        self._left = 0  # lines expired or cancelled batches did not run, this run
        self._created = 0
        self._bar: Any = None
        self._directory = chunk_directory(file_run.output_path)
        self._prices = price_table(options.prices)  # the built-in table, or the user's

    # -- control ----------------------------------------------------------------
    def stop(self) -> None:
        """Leave the batches running on the server and return at the next step."""
        self._stopped = True
        self._wake.set()

    async def _pause(self, delay_s: float) -> None:
        if self._sleep is not None:
            await self._sleep(delay_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay_s)

    def _price_of(self, model: str | None) -> Price | None:
        price = None if model is None else price_for(model, self._prices)
        return None if price is None else batch_price(price)

    # -- the run ------------------------------------------------------------------
    async def run(self) -> FileRunSummary:
        started = time.perf_counter()
        run = self._run
        state = BatchState.open(run.output_path, run.input_path)
        done = await asyncio.to_thread(DoneSet.from_output, run.output_path)
        merger = Merger(self._writer, self.stats, done=done.__contains__, price_of=self._price_of)
        fatal: _Fatal | None = None
        detached = False
        realtime: tuple[RunStats, tuple[str, str] | None, int | None] | None = None
        try:
            async with batch_transport(self._options) as transport:
                api = BatchAPI(transport)
                try:
                    detached = await self._loop(api, state, merger)
                except _Fatal as exc:
                    fatal = exc
            if not (detached or fatal or self._stopped) and self._left and self._fallback:
                realtime = await self._realtime(merger)
        finally:
            self._close_bar()
            self._writer.sync()
            with contextlib.suppress(OSError):
                self._directory.rmdir()  # only when empty: no chunk waits for its upload
            self.stats.elapsed_s = time.perf_counter() - started
        return self._summary(state, done, fatal, detached, realtime)

    @property
    def _fallback(self) -> bool:
        return self._batch.fallback == "realtime"

    async def _loop(self, api: BatchAPI, state: BatchState, merger: Merger) -> bool:
        """Until every line has a success or failed: True when detached."""
        await self._adopt_unrecorded(api, state)
        await self._adopt_uploads(api, state)
        while not self._stopped:
            if not state.active():
                if self._left and self._fallback:
                    return False
                chunks = await asyncio.to_thread(self._plan, state, merger)
                if not chunks:
                    return False
                planned_at = time.time()
                for chunk in chunks:
                    chunk.planned_at = planned_at
                state.chunks.extend(chunks)
                await asyncio.to_thread(state.save)
                if self._left:
                    logger.warning(
                        "resubmitting %s lines that expired or cancelled batches did not run, "
                        "in %d new %s",
                        f"{sum(c.lines for c in chunks):,}",
                        len(chunks),
                        "batch" if len(chunks) == 1 else "batches",
                    )
            await self._submit(api, state)
            if self._batch.detach and not self._stopped:
                if await self._poll(api, state, merger) and not state.active():
                    continue  # everything finished already: collect and go on
                return True
            if not await self._poll(api, state, merger) and not self._stopped:
                await self._pause(self._next_delay(state))
        return False

    def _plan(self, state: BatchState, merger: Merger) -> list[Chunk]:
        """Chunk files for every INPUT line without a success or a failure in this run."""
        batch = self._batch
        limits = ChunkLimits(
            batch.max_batch_lines, batch.max_batch_bytes, batch.max_enqueued_tokens
        )
        lines = iter_batch_requests(
            self._run.input_path, skip=merger.settled, default_model=self._options.model
        )
        return plan_chunks(lines, self._directory, limits, new_key=state.new_key)

    # -- creating -------------------------------------------------------------------
    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One Files/Batches call, retried on answers that may change (429, 5xx, resets)."""
        for attempt in range(_MAX_CALL_ATTEMPTS):
            try:
                return await call()
            except APIError as exc:
                if exc.status_code not in _TRANSIENT_STATUSES or attempt + 1 == _MAX_CALL_ATTEMPTS:
                    raise _Fatal(
                        exc.code or f"http_{exc.status_code}", str(exc), exc.status_code
                    ) from None
                logger.warning("%s: %s; trying again", what, exc)
            except TransportError as exc:
                if attempt + 1 == _MAX_CALL_ATTEMPTS:
                    raise _Fatal("connection_error", f"{what}: {exc}", None) from None
                logger.warning("%s: %s; trying again", what, exc)
            floor = self._batch.poll_interval_s
            await self._pause(
                poll_delay(attempt, floor_s=floor, cap_s=self._batch.max_poll_wait_s, rng=self._rng)
            )
            if self._stopped:
                raise _Fatal("stopped", f"{what}: stopped", None)
        raise AssertionError("unreachable")

    def _enqueued(self, state: BatchState, model: str | None) -> int:
        return sum(
            chunk.tokens
            for chunk in state.chunks
            if chunk.model == model and chunk.batch_id is not None and chunk.status in _ENQUEUED
        )

    def _may_create(self, state: BatchState, chunk: Chunk) -> bool:
        if self._retry_at.get(chunk.key, 0.0) > self._clock():
            return False
        cap = self._batch.max_enqueued_tokens
        if cap is None:
            return True
        enqueued = self._enqueued(state, chunk.model)
        return enqueued == 0 or enqueued + chunk.tokens <= cap

    async def _submit(self, api: BatchAPI, state: BatchState) -> None:
        """Upload planned chunks, create batches for uploaded ones (as the pool allows)."""
        for chunk in state.active():
            if self._stopped:
                return
            if chunk.status == "planned":
                path = self._directory / chunk.name
                if not path.exists():  # lost before its upload: its lines are planned again
                    state.chunks.remove(chunk)
                    await asyncio.to_thread(state.save)
                    continue
                if not state.token_saved:  # the name must be findable after a crash
                    await asyncio.to_thread(state.save)
                name = state.upload_name(chunk)
                chunk.file_id = await self._call(
                    f"upload of {name}", functools.partial(api.upload_file, path, filename=name)
                )
                chunk.status = "uploaded"
                await asyncio.to_thread(state.save)
            if chunk.status in ("uploaded", "waiting") and self._may_create(state, chunk):
                await self._create(api, state, chunk)

    async def _adopt_unrecorded(self, api: BatchAPI, state: BatchState) -> None:
        """Find batches created by a run that died before recording them, so none is made twice.

        Only chunks an earlier run uploaded and never saw refused or cancelled qualify;
        the newest 100 batches of the organization are searched for their file ids.
        """
        lost = {
            chunk.file_id: chunk
            for chunk in state.active()
            if chunk.status == "uploaded" and chunk.file_id and not chunk.refusals
        }
        if not lost:
            return
        listed = await self._call("list of batches", api.list_batches)
        for info in listed:
            chunk = lost.pop(info.input_file_id or "", None)
            if chunk is None or info.status in ("failed", "cancelled", "expired"):
                continue
            logger.warning(
                "found %s, created for %s by an earlier run that stopped before recording it; "
                "using it",
                info.id,
                chunk.name,
            )
            chunk.batch_id, chunk.status, chunk.created_at = info.id, info.status, time.time()
            await asyncio.to_thread(state.save)

    async def _adopt_uploads(self, api: BatchAPI, state: BatchState) -> None:
        """Find files uploaded by a run that died before recording them, so none goes twice.

        Only chunks still ``planned`` with their file on disk qualify (a run plans
        new chunks only once every earlier one is merged, so these are all earlier
        runs' chunks); they are searched by name and size among files of purpose
        ``batch``, newest first.
        """
        lost = {
            state.upload_name(chunk): chunk
            for chunk in state.active()
            if chunk.status == "planned" and (self._directory / chunk.name).exists()
        }
        if not lost:
            return
        times = [chunk.planned_at for chunk in lost.values()]
        not_before = None if None in times else min(t for t in times if t is not None)

        def page(after: str | None) -> Awaitable[FilePage]:
            return self._call(
                "list of files",
                functools.partial(api.list_files, purpose="batch", after=after, limit=_FILES_PAGE),
            )

        sizes = {name: chunk.bytes for name, chunk in lost.items()}
        found = await find_uploads(page, sizes, not_before=not_before)
        for name, info in found.items():
            chunk = lost[name]
            logger.warning(
                "found %s, uploaded as %s by an earlier run that stopped before recording it; "
                "using it",
                info.id,
                name,
            )
            chunk.file_id, chunk.status = info.id, "uploaded"
        if found:
            await asyncio.to_thread(state.save)

    async def _create(self, api: BatchAPI, state: BatchState, chunk: Chunk) -> None:
        file_id = chunk.file_id
        assert file_id is not None
        info = await self._call(
            f"batch creation for {chunk.name}",
            lambda: api.create_batch(
                file_id,
                chunk.url,
                completion_window=self._batch.completion_window,
                metadata={"ratelane_chunk": str(chunk.key)},
            ),
        )
        chunk.batch_id = info.id
        chunk.status = info.status
        chunk.created_at = time.time()
        chunk.completed = chunk.failed = 0
        self._created += 1
        self._retry_at.pop(chunk.key, None)
        await asyncio.to_thread(state.save)
        with contextlib.suppress(OSError):
            (self._directory / chunk.name).unlink()

    # -- polling ------------------------------------------------------------------
    def _next_delay(self, state: BatchState) -> float:
        delay = poll_delay(
            self._quiet,
            floor_s=self._batch.poll_interval_s,
            cap_s=self._batch.max_poll_wait_s,
            rng=self._rng,
        )
        now = self._clock()
        # A refused batch due sooner than the next poll shortens the wait (never to a spin).
        waits = [at - now for at in self._retry_at.values() if at > now]
        if waits:
            delay = min([delay, *waits])
        return delay

    async def _poll(self, api: BatchAPI, state: BatchState, merger: Merger) -> bool:
        """Retrieve each running batch once; merge finished ones. True if any finished."""
        changed = finished = False
        for chunk in state.active():
            if self._stopped:
                break
            batch_id = chunk.batch_id
            if batch_id is None or chunk.status in ("uploaded", "waiting", "planned"):
                continue
            info = await self._call(
                f"retrieve of {batch_id}", functools.partial(api.retrieve_batch, batch_id)
            )
            counts = info.request_counts
            if (info.status, counts.completed, counts.failed) != (
                chunk.status,
                chunk.completed,
                chunk.failed,
            ):
                changed = True
            status_changed = info.status != chunk.status
            chunk.status, chunk.completed, chunk.failed = (
                info.status,
                counts.completed,
                counts.failed,
            )
            if info.is_terminal:
                await self._finish(api, state, chunk, info, merger)
                finished = True
            elif status_changed:
                await asyncio.to_thread(state.save)
        self._quiet = 0 if changed else self._quiet + 1
        self._draw(state)
        return finished

    async def _finish(
        self, api: BatchAPI, state: BatchState, chunk: Chunk, info: BatchInfo, merger: Merger
    ) -> None:
        if info.status == "failed":
            if any(error.code == "token_limit_exceeded" for error in info.errors):
                self._refused(state, chunk, info)
            else:
                await asyncio.to_thread(self._invalid, chunk, info, merger)
                self._merged(chunk, "failed")
            await asyncio.to_thread(state.save)
            return
        self._directory.mkdir(parents=True, exist_ok=True)
        duplicates = 0
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id is None:
                continue
            target = self._directory / f"{chunk.name}.{file_id}.result"
            await self._call(
                f"download of {file_id}",
                functools.partial(api.download_file, file_id, target),
            )
            counts = await asyncio.to_thread(merger.merge, target, url=chunk.url, model=chunk.model)
            chunk.delivered += counts.delivered
            chunk.errors += counts.failed
            chunk.left += counts.left
            duplicates += counts.duplicates
            with contextlib.suppress(OSError):
                target.unlink()
        if info.status in ("expired", "cancelled"):
            # Lines the files do not mention (a batch cancelled while validating) never ran.
            unaccounted = chunk.lines - chunk.delivered - chunk.errors - chunk.left - duplicates
            chunk.left += max(0, unaccounted)
        verb = "was cancelled" if info.status == "cancelled" else info.status
        if chunk.left == chunk.lines and not duplicates and not self._fallback:
            # Nothing ran: the file already uploaded goes into a new batch, not uploaded again.
            barren = self._barren[chunk.key] = self._barren.get(chunk.key, 0) + 1
            if barren >= _MAX_BARREN:
                raise _Fatal(
                    "batches_not_running",
                    f"batch {chunk.batch_id} {verb} without running any of its lines: "
                    f"{barren} batches in a row of {chunk.name} ran nothing. HINT: see "
                    "`ratelane batch status OUTPUT`; --fallback realtime sends such lines "
                    "through the real-time API instead",
                    None,
                )
            logger.warning(
                "batch %s %s before running any of its %s lines; they are sent again in a "
                "new batch (the same uploaded file)",
                chunk.batch_id,
                verb,
                f"{chunk.lines:,}",
            )
            chunk.status, chunk.batch_id, chunk.left = "uploaded", None, 0
            await asyncio.to_thread(state.save)
            self._wake_refused()
            return
        await asyncio.to_thread(self._writer.sync)  # OUTPUT durable before "merged" is recorded
        self._merged(chunk, info.status)
        await asyncio.to_thread(state.save)
        if chunk.left:
            self._left += chunk.left
            how = "through the real-time API" if self._fallback else "in a new batch"
            logger.warning(
                "batch %s %s: %s of its %s lines were not run; they are sent again %s",
                chunk.batch_id,
                verb,
                f"{chunk.left:,}",
                f"{chunk.lines:,}",
                how,
            )
        self._wake_refused()

    def _wake_refused(self) -> None:
        """A batch that left the pool makes room: refused ones may try again now."""
        for key in self._retry_at:
            self._retry_at[key] = 0.0

    def _merged(self, chunk: Chunk, outcome: str) -> None:
        chunk.outcome = outcome
        chunk.status = "merged"

    def _refused(self, state: BatchState, chunk: Chunk, info: BatchInfo) -> None:
        chunk.refusals += 1
        message = next(e.message for e in info.errors if e.code == "token_limit_exceeded")
        delay = poll_delay(
            chunk.refusals - 1,
            floor_s=self._batch.poll_interval_s,
            cap_s=self._batch.max_poll_wait_s,
            rng=self._rng,
        )
        running = self._enqueued(state, chunk.model) > 0
        logger.warning(
            "batch %s refused, the enqueued-token pool is full (%s); its file is submitted "
            "again %s. HINT: --max-enqueued-tokens keeps under a known pool up front",
            info.id,
            message,
            "when an earlier batch finishes" if running else f"in {delay:.0f} s",
        )
        chunk.batch_id = None
        chunk.status = "waiting"
        # With a batch of ours in the pool, wait for it to finish (_finish wakes this one).
        self._retry_at[chunk.key] = math.inf if running else self._clock() + delay

    def _invalid(self, chunk: Chunk, info: BatchInfo, merger: Merger) -> None:
        """A batch that failed validation: every line of the chunk to ERRORS, at its INPUT line."""
        by_line: dict[int, tuple[str | None, str]] = {}
        general: list[str] = []
        for error in info.errors:
            number = None if error.line is None else chunk.input_line(error.line)
            if number is None:
                general.append(error.message)
            else:
                by_line.setdefault(number, (error.code, error.message))
        named = sorted(by_line)
        if named:
            logger.warning(
                "batch %s failed validation at INPUT lines %s: %s",
                info.id,
                _shown(named),
                "; ".join(f"line {n}: {by_line[n][1]}" for n in named[:3]),
            )
        else:
            logger.warning("batch %s failed validation: %s", info.id, "; ".join(general))
        wanted = set(chunk.line_ranges)
        elsewhere = f" (problems at INPUT lines {_shown(named)})" if named else ""
        reason = "; ".join(general) or f"the batch failed validation{elsewhere}"
        for line in self._input_lines(wanted):
            code, message = by_line.get(line.line_number, ("batch_failed", f"not run: {reason}"))
            merger.fail(
                Result(
                    index=0,
                    custom_id=line.custom_id,
                    ok=False,
                    error=ErrorInfo(
                        code,
                        f"INPUT line {line.line_number}: {message} (batch {info.id} failed "
                        "validation)",
                    ),
                    path=chunk.url,
                )
            )

    def _input_lines(self, wanted: set[int]) -> Iterator[BatchLine]:
        """The INPUT lines numbered in ``wanted``, reading no further than the last."""
        lines = iter_batch_requests(self._run.input_path, default_model=self._options.model)
        return islice((line for line in lines if line.line_number in wanted), len(wanted))

    # -- fallback -------------------------------------------------------------------
    async def _realtime(
        self, merger: Merger
    ) -> tuple[RunStats, tuple[str, str] | None, int | None]:
        """Send every line still without a success or a failure through the real-time engine."""
        run = self._run
        settled = await asyncio.to_thread(
            lambda: DoneSet(
                line.custom_id
                for line in iter_batch_requests(run.input_path)
                if merger.settled(line.custom_id)
            )
        )
        logger.warning(
            "sending the %s lines expired or cancelled batches did not run through the "
            "real-time API (fallback realtime)",
            f"{self._report.lines - len(settled):,}",
        )
        client = run._client()
        async with client:
            stats, fatal = await run._send(
                client, self._writer, settled, self._report, len(settled)
            )
        return stats, fatal, run._stop_status

    # -- progress -------------------------------------------------------------------
    def _draw(self, state: BatchState) -> None:
        if not self._options.progress:
            return
        active = [c for c in state.chunks if c.batch_id is not None or c.status == "merged"]
        total = sum(c.lines for c in active)
        done = sum(c.lines if c.merged else c.completed + c.failed for c in active)
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="line", desc="batches", dynamic_ncols=True)
        bar = self._bar
        bar.total = total
        bar.n = done
        statuses: dict[str, int] = {}
        for chunk in state.chunks:
            statuses[chunk.status] = statuses.get(chunk.status, 0) + 1
        completed = sum(c.delivered if c.merged else c.completed for c in active)
        failed = sum(c.errors if c.merged else c.failed for c in active)
        bar.set_postfix_str(
            f"completed={completed:,} failed={failed:,} "
            + " ".join(f"{name}={count}" for name, count in sorted(statuses.items())),
            refresh=False,
        )
        bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- the summary ------------------------------------------------------------------
    def _summary(
        self,
        state: BatchState,
        done: DoneSet,
        fatal: _Fatal | None,
        detached: bool,
        realtime: tuple[RunStats, tuple[str, str] | None, int | None] | None,
    ) -> FileRunSummary:
        from .file_run import ExitReason, FileRunSummary

        run = self._run
        stats = self.stats
        stop: tuple[str, str] | None = None
        stop_status: int | None = None
        if fatal is not None and fatal.reason != "stopped":
            stop, stop_status = (fatal.reason, str(fatal)), fatal.status
        if realtime is not None:
            extra, realtime_fatal, realtime_status = realtime
            _add(stats, extra)
            if realtime_fatal is not None:
                stop, stop_status = realtime_fatal, realtime_status
        lines = self._report.lines
        skipped = min(len(done), lines)
        finished = not (detached or self._stopped or stop is not None or fatal is not None)
        if realtime is not None and run._feed is not None and not run._feed.exhausted:
            finished = False
        reason = ExitReason.of(
            fatal=stop is not None, detached=detached, finished=finished, failed=stats.failed
        )
        return FileRunSummary(
            reason=reason,
            input_path=run.input_path,
            output_path=run.output_path,
            errors_path=run.errors_path,
            lines=lines,
            skipped=skipped,
            succeeded=stats.succeeded,
            failed=stats.failed,
            not_sent=max(0, lines - skipped - stats.succeeded - stats.failed),
            stats=stats,
            stop_reason=stop[0] if stop else None,
            stop_message=stop[1] if stop else None,
            stop_status=stop_status,
            repaired_bytes=self._writer.repaired_bytes,
            revalidated=True,
            via="batch",
            batches_pending=len(state.active()),
        )


def _add(total: RunStats, extra: RunStats) -> None:
    """Fold the real-time fallback's counts into the batch run's."""
    for name in (
        "succeeded",
        "failed",
        "retried",
        "attempts",
        "rate_limited",
        "cooldowns",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "reasoning_tokens",
    ):
        setattr(total, name, getattr(total, name) + getattr(extra, name))
    for latency in extra.latencies_s:
        total.latencies_s.append(latency)
    if extra.cost_usd is not None:
        total.cost_usd = (total.cost_usd or 0.0) + extra.cost_usd
