"""A file run: every request of a Batch-format INPUT, checkpointed in OUTPUT, resumable.

``run_file`` / ``arun_file`` are what ``ratelane run`` does, minus the
terminal: any caller (a script, a notebook, a job runner) gets the same
validation, lock, resume and crash safety. The order of a run, each step able
to stop it before anything is sent::

    options valid -> paths distinct -> INPUT valid (or unchanged since it was
    validated, see validated.py) and not empty -> lock OUTPUT -> repair a torn
    last line -> read OUTPUT's successes (only past the resume marker when it
    holds, see marker.py) -> send the rest, appending each result as it
    completes -> fsync, then record the marker -> FileRunSummary

Resume is the same call again: lines whose ``custom_id`` already has a
success in OUTPUT are skipped, everything else (earlier failures included) is
sent. :meth:`FileRun.stop` stops admitting requests and lets those in flight
finish; :meth:`FileRun.abort` also cancels those in flight. Neither touches
signals: the CLI's handler calls them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ratelane._api.blocking import blocking
from ratelane._api.client import Client
from ratelane._api.options import Prices
from ratelane._core.batch_line import line_problems
from ratelane._core.config import RetryPolicy
from ratelane._core.errors import ConfigurationError, FatalError, InputError
from ratelane._core.models import SUPPORTED_PATHS, Request, Result, RunStats
from ratelane._engine.breaker import BreakerPolicy, CircuitBreaker
from ratelane._engine.chains import ChainScheduler
from ratelane._engine.circuit import circuit_text
from ratelane._engine.engine import Engine
from ratelane._limits.governor import RateGovernor

from .batch_options import BatchRunOptions
from .batch_state import warn_uncollected
from .chains import ChainGraph, ChainInputError, load_chains, parent_ids

if TYPE_CHECKING:
    from ratelane._limits.redis_budget import RedisLimiter

from .checkpoint import DoneSet, OutputLock, ResultWriter
from .input import (
    _BOM,
    _READ_BUFFER,
    ValidationReport,
    validate_batch_file,
)
from .input import _parse as parse_line
from .marker import START, Checkpoint, DonePrefix, MarkerFile, Position, load_checkpoint
from .pending import attach_background
from .progress import Progress
from .shard import Shard, shard_lines
from .spent import spent_in_output
from .validated import Fingerprint, load_report, save_report

__all__ = [
    "ExitReason",
    "FileRun",
    "FileRunOptions",
    "FileRunSummary",
    "InvalidInputError",
    "arun_file",
    "check_chains",
    "check_input",
    "check_paths",
    "default_errors_path",
    "empty_input",
    "run_file",
]

StrPath = str | os.PathLike[str]

#: Seconds between fsyncs of OUTPUT and ERRORS (and always at the end).
FSYNC_INTERVAL_S = 1.0
DEFAULT_MAX_CONCURRENCY = 256
DEFAULT_TIMEOUT_S = 600.0


def default_errors_path(output_path: StrPath) -> Path:
    """``out.jsonl`` -> ``out.errors.jsonl``, in OUTPUT's directory."""
    path = Path(output_path)
    return path.with_name(path.stem + ".errors.jsonl")


# --------------------------------------------------------------------------- values


class ExitReason(enum.Enum):
    """How a file run ended."""

    #: Every line of INPUT has a success in OUTPUT (also when nothing was left to send).
    COMPLETED = "completed"
    #: INPUT was read to the end, but some lines failed permanently (see ERRORS).
    SOME_FAILED = "some_failed"
    #: Stopped early because continuing could not succeed (invalid key, quota, error streak).
    FATAL = "fatal"
    #: Stopped by :meth:`FileRun.stop` / :meth:`FileRun.abort` before the end.
    STOPPED = "stopped"
    #: Batch API mode with ``detach``: the batches run on; the same call collects them.
    DETACHED = "detached"

    @classmethod
    def of(cls, *, fatal: bool, finished: bool, failed: int, detached: bool = False) -> ExitReason:
        """The reason for a run that stopped fatally, detached, ended early or finished."""
        if fatal:
            return cls.FATAL
        if detached:
            return cls.DETACHED
        if not finished:
            return cls.STOPPED
        return cls.SOME_FAILED if failed else cls.COMPLETED


class InvalidInputError(InputError):
    """INPUT is not a valid Batch-format file; ``report`` has the problems and line numbers."""

    def __init__(self, message: str, *, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRunOptions:
    """How a file run connects and paces: the client options of ``run_many``.

    ``model`` is added to bodies that have none. ``api_key`` defaults to
    ``OPENAI_API_KEY``, ``base_url`` to ``OPENAI_BASE_URL`` or OpenAI's.
    ``fsync_interval_s``: seconds between fsyncs of OUTPUT and ERRORS (0:
    after every line); ``progress``: a tqdm bar (a widget in notebooks).
    ``max_cost``, ``breaker``, ``cache``, ``remember_limits``: as for ``run_many``
    (issue 14); ``max_cost`` bounds what all of OUTPUT cost, earlier runs included.
    ``limiter``: one budget shared through Redis (a ``RedisLimiter`` or a
    ``redis://`` URL; default ``RATELANE_REDIS_URL``); ``shard``: send and count
    only the lines of that ``Shard`` (``ratelane run --shard I/N``).
    """

    model: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    retry: RetryPolicy | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = 10.0
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    organization: str | None = None
    project: str | None = None
    prices: Prices = None
    progress: bool = False
    fsync_interval_s: float = FSYNC_INTERVAL_S
    # Batch API mode (issue 11, batch_mode.py): "batch" sends INPUT through /v1/batches.
    via: Literal["realtime", "batch"] = "realtime"
    batch: BatchRunOptions | None = None
    #: Background mode (issue 12): every line sent with "background": true and polled;
    #: ids journaled in <OUTPUT>.pending.jsonl. cancel_on_exit: cancel them on stop().
    background: bool = False
    cancel_on_exit: bool = False
    # Operating a run (issue 14); ``max_cost`` bounds the spend recomputed from OUTPUT.
    max_cost: float | None = None
    breaker: BreakerPolicy | bool = True
    cache: StrPath | None = None
    remember_limits: bool = True
    # Issue 13: one budget shared through Redis (a RedisLimiter or a redis:// URL), and
    # --shard I/N: only the lines whose shard_of(custom_id, N) == I are sent and counted.
    limiter: RedisLimiter | str | None = None
    shard: Shard | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not (isinstance(self.model, str) and self.model):
            raise ConfigurationError(f"model must be a non-empty model name, got {self.model!r}")
        if self.via not in ("realtime", "batch"):  # Batch API mode (issue 11)
            raise ConfigurationError(f'via must be "realtime" or "batch", got {self.via!r}')
        if self.via == "batch" and self.shard is not None:
            raise ConfigurationError(
                "--shard splits a real-time run across machines; a Batch API run needs no "
                "sharding (the service runs it). HINT: drop --shard, or use --via realtime"
            )
        if self.via == "batch" and (self.background or self.cancel_on_exit):
            raise ConfigurationError(
                "background mode is for real-time runs: a Batch API run is already "
                "asynchronous. HINT: drop --background/--cancel-on-exit, or use --via realtime"
            )
        if not self.fsync_interval_s >= 0:
            raise ConfigurationError(
                f"fsync_interval_s must be 0 or more seconds, got {self.fsync_interval_s}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRunSummary:
    """What a file run did.

    ``lines``: requests in INPUT; ``skipped``: lines not sent because OUTPUT
    already had their success; ``succeeded``/``failed``: results of this run;
    ``not_sent``: lines this run never finished (stopped early);
    ``abandoned``: requests cancelled in flight by :meth:`FileRun.abort`.
    ``stop_reason``/``stop_message``/``stop_status`` describe a FATAL stop
    (``stop_status`` is the HTTP status of the answer that caused it, if any).
    ``revalidated`` is false when INPUT was known valid and unchanged.
    ``fast_resume`` is true when the resume marker (``<OUTPUT>.resume.json``)
    let the run start reading INPUT and OUTPUT past their done prefix.
    """

    reason: ExitReason
    input_path: Path
    output_path: Path
    errors_path: Path
    lines: int
    skipped: int
    succeeded: int
    failed: int
    not_sent: int
    abandoned: int = 0
    stats: RunStats
    stop_reason: str | None = None
    stop_message: str | None = None
    stop_status: int | None = None
    learned_rpm: float | None = None
    learned_tpm: float | None = None
    repaired_bytes: int = 0
    revalidated: bool = True
    fast_resume: bool = False
    # Batch API mode (issue 11): the mode, and batches not yet collected (``DETACHED``).
    via: str = "realtime"
    batches_pending: int = 0
    # Operating a run (issue 14): with max_cost, what OUTPUT has cost in all (earlier
    # runs included) and the cap; a response cache that could not be used, and why.
    spent_usd: float | None = None
    max_cost_usd: float | None = None
    cache_problem: str | None = None
    #: ``--shard I/N`` (issue 13): ``lines`` etc. count this shard's lines of INPUT's
    #: ``input_lines``.
    shard: Shard | None = None
    input_lines: int = 0

    @property
    def ok(self) -> bool:
        """Every line of INPUT has a success in OUTPUT."""
        return self.reason is ExitReason.COMPLETED

    @property
    def remaining(self) -> int:
        """Lines that still lack a success (failed, or never sent)."""
        return self.failed + self.not_sent


# ------------------------------------------------------------------ the engine, in one place


class _EngineRun:
    """Every call this module makes to the engine: one ``Run`` of the client's Engine."""

    __slots__ = ("_engine", "_run")

    def __init__(self, client: Client) -> None:
        self._engine: Engine = client.engine
        self._run = self._engine.new_run(max_concurrency=client.max_concurrency)

    async def drive(
        self,
        requests: Iterator[tuple[int, Request]] | AsyncIterator[tuple[int, Request]],
        sink: Callable[[Result], Any],
    ) -> RunStats:
        return await self._run.drive(requests, sink)

    def stop(self) -> None:
        self._run.stop()

    def attach_background(self, output_path: Path, done: DoneSet, options: FileRunOptions) -> Any:
        """Background mode (issue 12): the journal and poller; see pending.py."""
        return attach_background(
            self._run,
            output_path,
            done,
            enabled=options.background,
            cancel_on_exit=options.cancel_on_exit,
        )

    @property
    def stats(self) -> RunStats:
        return self._run.stats

    @property
    def fatal(self) -> tuple[str, str] | None:
        return self._run.fatal

    @property
    def governor(self) -> RateGovernor:
        return self._engine.governor

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._engine.breaker


# --------------------------------------------------------------------------- reading INPUT


#: A line that begins with its ``custom_id`` (the usual layout of Batch files) gives
#: it up without a JSON parse, so a resume skips done lines cheaply. Trusted only
#: when the line names "custom_id" once (a duplicate key would be ambiguous).
_LEADING_ID = re.compile(rb'\{\s*"custom_id"\s*:\s*"([^"\\]+)"')


def _leading_id(raw: bytes) -> str | None:
    head = _LEADING_ID.match(raw)
    if head is None or raw.count(b'"custom_id"') != 1:
        return None
    try:
        return head.group(1).decode()
    except UnicodeDecodeError:
        return None


def _lines_from(path: Path, start: Position) -> Iterator[tuple[int, int, bytes]]:
    """``(line_number, end_offset, raw)`` of each non-blank line from ``start`` on, BOM removed."""
    offset, number, _ = start
    with open(path, "rb", buffering=_READ_BUFFER) as file:
        file.seek(offset)
        for raw in file:
            number += 1
            offset += len(raw)
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.isspace() or not raw:
                continue
            yield number, offset, raw


def _requests(
    path: Path,
    done: DoneSet,
    default_model: str | None,
    prefix: DonePrefix,
    shard: Shard | None = None,
) -> Iterator[tuple[int, Request]]:
    """``(line_number, Request)`` for each line of INPUT without a success in ``done``,
    from ``prefix.frontier`` on (the lines before it are known done).

    INPUT was validated, so each line gets only the checks that keep a request
    well-formed (one parse, a few type tests); a line that fails them means
    INPUT changed since: :class:`InputError` with the line number and the
    validator's full message. ``prefix`` learns each line read (skipped or sent).
    """
    skipping = len(done) > 0
    before = prefix.frontier
    count = before[2]
    for number, end, raw in _lines_from(path, before):
        count += 1
        after = (end, number, count)
        if skipping or shard is not None:
            custom_id = _leading_id(raw)
            if custom_id is not None and custom_id in done:
                prefix.frontier = prefix.last_skip = before = after
                prefix.skips += 1
                continue
            if shard is not None and custom_id is not None and custom_id not in shard:
                prefix.frontier = before = after  # another shard's line (issue 13)
                continue
        obj, problem = parse_line(raw)
        if problem is not None:
            raise InputError(problem, line=number)
        if type(obj) is dict:
            custom_id = obj.get("custom_id")
            url = obj.get("url")
            body = obj.get("body")
            if (
                type(custom_id) is str
                and custom_id
                and type(body) is dict
                and url in SUPPORTED_PATHS
                and obj.get("method") == "POST"
            ):
                if skipping and custom_id in done:
                    prefix.frontier = prefix.last_skip = before = after
                    prefix.skips += 1
                    continue
                if shard is not None and custom_id not in shard:
                    prefix.frontier = before = after  # another shard's line (issue 13)
                    continue
                if default_model is not None and "model" not in body:
                    body = {"model": default_model, **body}
                prefix.sent(custom_id, before)
                prefix.frontier = before = after
                yield number, Request(body, custom_id, url)
                continue
        raise InputError("; ".join(line_problems(obj, number)), line=number)


class _Feed:
    """The requests still to send, read lazily from INPUT as the workers pull."""

    __slots__ = ("_lines", "_on_exhausted", "exhausted", "sent", "stopped")

    def __init__(
        self,
        path: Path,
        done: DoneSet,
        *,
        default_model: str | None,
        on_exhausted: Callable[[int], None],
        prefix: DonePrefix,
        shard: Shard | None = None,
    ) -> None:
        self._lines = _requests(path, done, default_model, prefix, shard)
        self._on_exhausted = on_exhausted
        self.sent = 0
        self.exhausted = False
        self.stopped = False

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> tuple[int, Request]:
        if self.stopped:  # FileRun.stop(): hand out nothing more (INPUT is not exhausted)
            raise StopIteration
        try:
            item = next(self._lines)
        except StopIteration:
            if not self.exhausted:
                self.exhausted = True
                self._on_exhausted(self.sent)
            raise
        self.sent += 1
        return item


def check_paths(input_path: Path, output_path: Path, errors_path: Path) -> None:
    paths = {"INPUT": input_path, "OUTPUT": output_path, "ERRORS": errors_path}
    resolved = {name: os.path.realpath(path) for name, path in paths.items()}
    for first, second in (("INPUT", "OUTPUT"), ("INPUT", "ERRORS"), ("OUTPUT", "ERRORS")):
        if resolved[first] == resolved[second]:
            raise ConfigurationError(
                f"{first} and {second} are the same file ({paths[first]}). "
                f"HINT: give {second} another name"
            )
    if output_path.is_dir():
        raise ConfigurationError(f"OUTPUT {output_path} is a directory. HINT: name a file in it")
    for name in ("OUTPUT", "ERRORS"):
        directory = paths[name].parent
        if not directory.is_dir():
            raise ConfigurationError(
                f"{name}'s directory {directory} does not exist. HINT: create it first"
            )


def check_input(
    path: Path, *, max_reported: int = 10, estimate_tokens: bool = True
) -> ValidationReport:
    """Validate INPUT; raise :class:`InvalidInputError` if it cannot be read or has problems."""
    try:
        report = validate_batch_file(
            path, max_reported=max_reported, estimate_tokens=estimate_tokens
        )
    except FileNotFoundError:
        raise InvalidInputError(f"INPUT {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInputError(f"INPUT {path} is a directory; give a .jsonl file") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read INPUT {path}: {exc.strerror or exc}") from None
    if not report.ok:
        raise InvalidInputError(report.describe(), report=report)
    return report


def check_chains(path: Path) -> ChainGraph | None:
    """INPUT's chains (issue 12), or :class:`InvalidInputError` listing their problems."""
    try:
        return load_chains(path)
    except ChainInputError as exc:
        raise InvalidInputError(str(exc)) from None


def empty_input(path: Path) -> InvalidInputError:
    return InvalidInputError(
        f"INPUT holds no requests: {path} is empty or has only blank lines. "
        "HINT: check that you passed the right file"
    )


# --------------------------------------------------------------------------- the run


class FileRun:
    """One file run: create it, ``await run()``, optionally ``stop()`` or ``abort()`` meanwhile.

    ``on_result`` is called with each result after its line is written (the
    CLI draws its progress with it). Everything else about the run is
    :class:`FileRunOptions`.
    """

    def __init__(
        self,
        input: StrPath,
        output: StrPath,
        *,
        errors: StrPath | None = None,
        options: FileRunOptions | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.input_path = Path(input)
        self.output_path = Path(output)
        self.errors_path = (
            Path(errors) if errors is not None else default_errors_path(self.output_path)
        )
        self.options = options if options is not None else FileRunOptions()
        self._on_result = on_result
        self._engine_run: _EngineRun | None = None
        self._task: asyncio.Future[RunStats] | None = None
        self._feed: _Feed | None = None
        self._started = False
        self._stop_requested = False
        self._abandoned: int | None = None
        self._stop_status: int | None = None
        self._bar: Any = None
        self._prefix: DonePrefix | None = None
        self._marker: MarkerFile | None = None
        self._batch_mode: Any = None  # Batch API mode (issue 11): its BatchMode while it runs
        self._chains: ChainGraph | None = None  # chains (issue 12)
        self._scheduler: ChainScheduler | None = None
        self._input_lines = 0

    # -- control, callable from a signal handler or another task ------------------
    def stop(self) -> None:
        """Send no new requests; those in flight finish and are written. Idempotent."""
        self._stop_requested = True
        if self._batch_mode is not None:  # Batch API mode (issue 11)
            self._batch_mode.stop()
        if self._feed is not None:
            self._feed.stopped = True
        if self._scheduler is not None:  # chains (issue 12): wake a worker waiting on a parent
            self._scheduler.wake()
        if self._engine_run is not None:
            self._engine_run.stop()

    def abort(self) -> bool:
        """Stop now: cancel the requests in flight too (they are sent again on resume).

        Returns whether there was a running send to cancel.
        """
        self.stop()
        if self._task is None or self._task.done() or self._abandoned is not None:
            return False
        self._abandoned = self.in_flight
        self._task.cancel()
        return True

    @property
    def in_flight(self) -> int:
        """Requests handed to the engine that have no result yet."""
        if self._feed is None or self._engine_run is None:
            return 0
        held = self._scheduler.held if self._scheduler is not None else 0  # chains (issue 12)
        return max(0, self._feed.sent - held - self._engine_run.stats.completed)

    @property
    def stats(self) -> RunStats | None:
        """The live counts of this run (``None`` before sending starts)."""
        return self._engine_run.stats if self._engine_run is not None else None

    @property
    def governor(self) -> RateGovernor | None:
        """The rate governor in use (``None`` before sending starts), for live rates."""
        return self._engine_run.governor if self._engine_run is not None else None

    # -- the run ------------------------------------------------------------------
    def _client(self) -> Client:
        options = self.options
        return Client(
            api_key=options.api_key,
            base_url=options.base_url,
            organization=options.organization,
            project=options.project,
            rpm=options.rpm,
            tpm=options.tpm,
            max_concurrency=options.max_concurrency,
            retry=options.retry,
            timeout_s=options.timeout_s,
            connect_timeout_s=options.connect_timeout_s,
            prices=options.prices,
            max_cost=options.max_cost,
            breaker=options.breaker,
            cache=options.cache,
            remember_limits=options.remember_limits,
            model=options.model,  # names the shared budget (issue 13); bodies get it in _Feed
            limiter=options.limiter,
        )

    def _validated(self) -> tuple[ValidationReport, bool, Fingerprint | None]:
        """INPUT's report, whether it was validated now (not remembered), and the
        fingerprint of the INPUT it describes (``None``: unknown)."""
        remembered = load_report(self.output_path, self.input_path)
        if remembered is not None:
            try:
                return remembered, False, Fingerprint.of(self.input_path)
            except OSError:
                return remembered, False, None
        began_ns = time.time_ns()
        try:
            before: Fingerprint | None = Fingerprint.of(self.input_path)
        except OSError:
            before = None  # check_input says what is wrong with the path
        report = check_input(self.input_path, estimate_tokens=False)  # a run needs no estimate
        if report.lines and before is not None:
            save_report(self.output_path, self.input_path, report, before, began_ns=began_ns)
        return report, True, before

    def _resume_from(
        self, fingerprint: Fingerprint | None, revalidated: bool
    ) -> tuple[Checkpoint | None, DoneSet]:
        """Where this run starts reading INPUT, and the successes in OUTPUT after that point.

        The marker is used only when INPUT is the one it was written for (known
        unchanged since validation); otherwise, and for OUTPUT changed under
        it, OUTPUT is read whole (the slow path).
        """
        start: Checkpoint | None = None
        earlier: tuple[Checkpoint, ...] = ()
        # With --shard (issue 13) the marker is off: its prefix counts every line of INPUT.
        sharded = self.options.shard is not None
        if fingerprint is not None and not revalidated and not sharded:
            start, earlier = load_checkpoint(self.output_path, self.input_path, fingerprint)
        if fingerprint is not None and not sharded:
            self._marker = MarkerFile(
                self.output_path, self.input_path, fingerprint, earlier=earlier
            )
        scan_from = start.scan_from if start is not None else 0
        done = DoneSet.from_output(self.output_path, start=scan_from)
        self._prefix = DonePrefix(
            start.position if start is not None else START, scan_from=scan_from, done=len(done)
        )
        return start, done

    def _checkpoint(self, output_size: int) -> None:
        """After each fsync of OUTPUT: record how far INPUT is done (the resume marker)."""
        if self._marker is not None and self._prefix is not None:
            self._marker.checkpoint(self._prefix, output_size)

    async def run(self) -> FileRunSummary:
        """Validate, lock, resume and send; return the summary.

        Raises :class:`ConfigurationError` for bad options or paths,
        :class:`InvalidInputError` (an ``InputError``) for invalid or empty
        INPUT, :class:`~ratelane.OutputLockedError` if another run holds
        OUTPUT; in each case nothing was sent. A fatal stop is not raised: it
        is ``reason=FATAL`` in the summary, with the cause.
        """
        if self._started:
            raise RuntimeError("a FileRun runs once; create another to resume")
        self._started = True
        client = self._client()
        check_paths(self.input_path, self.output_path, self.errors_path)
        # In a worker thread: seconds on a big file, and the loop stays free (signals, UIs).
        report, revalidated, fingerprint = await asyncio.to_thread(self._validated)
        if report.lines == 0:
            raise empty_input(self.input_path)
        self._chains = await asyncio.to_thread(check_chains, self.input_path)  # issue 12
        if self._chains is not None and self.options.shard is not None:
            raise InvalidInputError(
                f"INPUT has {len(self._chains.parent_of):,} chained line(s) "
                '("previous_custom_id"), and --shard splits lines by custom_id: a turn and its '
                "parent could land in different shards. HINT: run chained INPUT without --shard"
            )
        if self._chains is not None and self.options.via == "batch":
            raise InvalidInputError(
                f"INPUT has {len(self._chains.parent_of):,} chained line(s) "
                '("previous_custom_id"); the Batch API cannot chain: a turn needs its parent\'s '
                "response id before it is submitted. HINT: send this INPUT with --via realtime "
                "(the default), or move the chained lines to a file of their own"
            )
        self._input_lines = report.lines
        shard = self.options.shard
        if shard is not None:  # issue 13: this shard's lines are the run's lines
            lines = await asyncio.to_thread(shard_lines, self.input_path, shard)
            report = dataclasses.replace(report, lines=lines)
        with (
            OutputLock(self.output_path),
            ResultWriter(
                self.output_path,
                self.errors_path,
                fsync_interval_s=self.options.fsync_interval_s,
                on_sync=self._checkpoint,
            ) as writer,
        ):
            if self.options.via == "batch":  # Batch API mode (issue 11): batch_mode.py
                from .batch_mode import BatchMode

                self._batch_mode = batch_mode = BatchMode(self, writer, report)
                if self._stop_requested:
                    batch_mode.stop()
                return await batch_mode.run()
            warn_uncollected(self.output_path)  # Batch API mode (issue 11): batches still out
            start, done = await asyncio.to_thread(self._resume_from, fingerprint, revalidated)
            known_done = len(done) + (start.done_lines if start is not None else 0)
            async with client:
                spend = client.engine.spend
                if spend is not None:  # spend cap (issue 14): count what OUTPUT already cost
                    spent = await asyncio.to_thread(
                        spent_in_output, self.output_path, client.engine.prices
                    )
                    spend.spent_usd += spent.usd
                stats, fatal = await self._send(client, writer, done, report, known_done)
                governor = self._engine_run.governor if self._engine_run else None
                cache = client.engine.cache
        summary = self._summary(
            report, known_done, stats, fatal, writer, governor, revalidated, start is not None
        )
        return dataclasses.replace(  # issue 14
            summary,
            spent_usd=spend.spent_usd if spend is not None else None,
            max_cost_usd=spend.max_cost_usd if spend is not None else None,
            cache_problem=cache.problem if cache is not None else None,
        )

    async def _send(
        self,
        client: Client,
        writer: ResultWriter,
        done: DoneSet,
        report: ValidationReport,
        known_done: int,
    ) -> tuple[RunStats, tuple[str, str] | None]:
        engine_run = _EngineRun(client)
        self._engine_run = engine_run
        journal = engine_run.attach_background(self.output_path, done, self.options)  # issue 12
        prefix = self._prefix if self._prefix is not None else DonePrefix()
        bar = self._progress_bar(max(0, report.lines - known_done))
        feed = _Feed(
            self.input_path,
            done,
            default_model=self.options.model,
            on_exhausted=bar.exhausted,
            prefix=prefix,
            shard=self.options.shard,
        )
        feed.stopped = self._stop_requested  # stop() before sending began: send nothing
        self._feed = feed
        append = writer.append_soon  # one os.write per pass of the loop, not per line
        sync_if_due = writer.sync_if_due
        on_result = self._on_result
        tick = bar.tick
        succeeded, failed = prefix.succeeded, prefix.failed

        async def sink(result: Result) -> None:
            # The resume marker learns of the line before the fsync that may follow it.
            offset = append(result)
            if offset >= 0:
                succeeded(result.custom_id, offset)
            else:
                failed(result.custom_id, writer.output_size)
            sync_if_due()
            if not result.ok and self._stop_status is None and engine_run.fatal is not None:
                self._stop_status = result.status_code
            if on_result is not None:
                on_result(result)
            tick()

        source: Iterator[tuple[int, Request]] | AsyncIterator[tuple[int, Request]] = feed
        sink_of_run: Callable[[Result], Awaitable[None]] = sink
        if self._chains is not None:  # chains (issue 12): children after their parents
            known = await asyncio.to_thread(parent_ids, self.output_path, self._chains.parents)
            scheduler = self._scheduler = ChainScheduler(
                self._chains.parent_of,
                response_ids=known,
                stats=engine_run.stats,
                stopping=lambda: self._stop_requested or engine_run.fatal is not None,
            )
            source, sink_of_run = scheduler.requests(feed), scheduler.sink(sink)
        task = asyncio.ensure_future(engine_run.drive(source, sink_of_run))
        self._task = task
        try:
            await asyncio.wait({task})
        finally:
            if not task.done():  # our caller was cancelled: cancel the engine with it
                task.cancel()
                await asyncio.wait({task})
            bar.close()
            journal.close()  # background mode (issue 12)
        fatal: tuple[str, str] | None = None
        if not task.cancelled():
            exc = task.exception()
            if isinstance(exc, FatalError):
                fatal = (exc.reason, str(exc))
            elif exc is not None:
                raise exc
        return engine_run.stats, fatal

    def _progress_bar(self, total: int) -> Progress:
        return Progress(
            total=total, enabled=self.options.progress, live=self._live, circuit=self._circuit
        )

    def _circuit(self) -> str | None:  # the breaker's state for the bar (issue 14)
        engine_run = self._engine_run
        return None if engine_run is None else circuit_text(engine_run.breaker)

    def _live(self) -> tuple[RunStats, RateGovernor] | None:
        engine_run = self._engine_run
        return None if engine_run is None else (engine_run.stats, engine_run.governor)

    def _summary(
        self,
        report: ValidationReport,
        known_done: int,
        stats: RunStats,
        fatal: tuple[str, str] | None,
        writer: ResultWriter,
        governor: RateGovernor | None,
        revalidated: bool,
        fast_resume: bool,
    ) -> FileRunSummary:
        feed = self._feed
        exhausted = feed is not None and feed.exhausted and self._abandoned is None
        # Lines already in OUTPUT that are also in INPUT: exact once INPUT was read to the end.
        skipped = min(known_done, report.lines)
        if feed is not None and exhausted:
            skipped = report.lines - feed.sent
        not_sent = max(0, report.lines - skipped - stats.succeeded - stats.failed)
        reason = ExitReason.of(
            fatal=fatal is not None,
            finished=exhausted and not not_sent,  # not_sent: read, but stopped before an answer
            failed=stats.failed,
        )
        return FileRunSummary(
            reason=reason,
            input_path=self.input_path,
            output_path=self.output_path,
            errors_path=self.errors_path,
            lines=report.lines,
            skipped=skipped,
            succeeded=stats.succeeded,
            failed=stats.failed,
            not_sent=not_sent,
            abandoned=self._abandoned or 0,
            stats=stats,
            stop_reason=fatal[0] if fatal else None,
            stop_message=fatal[1] if fatal else None,
            stop_status=self._stop_status if fatal else None,
            learned_rpm=governor.learned_rpm if governor else None,
            learned_tpm=governor.learned_tpm if governor else None,
            repaired_bytes=writer.repaired_bytes,
            revalidated=revalidated,
            fast_resume=fast_resume,
            shard=self.options.shard,
            input_lines=self._input_lines,
        )


# --------------------------------------------------------------------------- entry points


async def arun_file(
    input: StrPath,
    output: StrPath,
    *,
    errors: StrPath | None = None,
    model: str | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = 10.0,
    api_key: str | None = None,
    base_url: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    prices: Prices = None,
    progress: bool = True,
    fsync_interval_s: float = FSYNC_INTERVAL_S,
    via: Literal["realtime", "batch"] = "realtime",
    batch: BatchRunOptions | None = None,
    background: bool = False,
    cancel_on_exit: bool = False,
    max_cost: float | None = None,
    breaker: BreakerPolicy | bool = True,
    cache: StrPath | None = None,
    remember_limits: bool = True,
    limiter: RedisLimiter | str | None = None,
    shard: Shard | str | None = None,
) -> FileRunSummary:
    """Send every request of the Batch-format file ``input``; successes go to ``output``.

    Resumable: call it again with the same paths and only the lines without
    a success in ``output`` are sent. ``errors`` (default
    ``<output stem>.errors.jsonl``) gets this run's permanent failures.
    ``via="batch"`` sends them through the Batch API at half the price
    (``batch``: a :class:`BatchRunOptions`; see batch_mode.py). See
    :class:`FileRunOptions` for the options and :meth:`FileRun.run` for what
    is raised; the result is a :class:`FileRunSummary`.
    """
    options = FileRunOptions(
        model=model,
        max_concurrency=max_concurrency,
        rpm=rpm,
        tpm=tpm,
        retry=retry,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        api_key=api_key,
        base_url=base_url,
        organization=organization,
        project=project,
        prices=prices,
        progress=progress,
        fsync_interval_s=fsync_interval_s,
        via=via,
        batch=batch,
        background=background,
        cancel_on_exit=cancel_on_exit,
        max_cost=max_cost,
        breaker=breaker,
        cache=cache,
        remember_limits=remember_limits,
        limiter=limiter,
        shard=Shard.parse(shard) if isinstance(shard, str) else shard,
    )
    return await FileRun(input, output, errors=errors, options=options).run()


run_file = blocking(arun_file)
run_file.__name__ = run_file.__qualname__ = "run_file"
run_file.__doc__ = """Blocking form of :func:`arun_file` (same arguments), for scripts, notebooks.

Inside a running event loop (Jupyter), the run happens on a fresh loop in a
worker thread, leaving the caller's loop untouched. Resume a half-done file
by calling it again with the same paths.
"""
