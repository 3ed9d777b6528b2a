"""``ratelane run``: send every request of a Batch-format file, checkpointed and resumable.

The order of a run, each step able to stop it before anything is sent::

    API key present -> options valid -> INPUT valid (streamed, every line)
    -> lock OUTPUT -> repair a torn last line -> read OUTPUT's successes
    -> send the rest (engine), appending each result as it completes
    -> fsync, summary, exit code

Signals: the first SIGINT/SIGTERM stops admitting new requests and gives
those in flight ``GRACE_S`` seconds; a second one (or the end of the grace)
cancels them. Either way every line already written is whole, the files are
fsync-ed, and the command to resume is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ratelane._api.client import Client
from ratelane._core.argtypes import positive_float, positive_int
from ratelane._core.config import RetryPolicy
from ratelane._core.errors import ConfigurationError, FatalError, InputError, OutputLockedError
from ratelane._core.models import Request, Result, RunStats
from ratelane._engine.run import Run
from ratelane._files.checkpoint import DoneSet, OutputLock, ResultWriter
from ratelane._files.input import (
    BatchLine,
    ValidationReport,
    iter_batch_requests,
    validate_batch_file,
)
from ratelane._http.wire import DEFAULT_BASE_URL

from .main import EXIT_FAILED, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .summary import RunSummary, format_summary, progress_postfix

__all__ = [
    "GRACE_S",
    "RunSettings",
    "add_parser",
    "default_errors_path",
    "run",
    "run_batch",
]

#: Seconds requests already in flight may take to finish after the first SIGINT/SIGTERM.
GRACE_S = 10.0
#: Seconds between fsyncs of OUTPUT and ERRORS (and always at the end).
FSYNC_INTERVAL_S = 1.0
#: Seconds between updates of the progress bar's ok/failed/limits text.
POSTFIX_INTERVAL_S = 0.25
DEFAULT_MAX_CONCURRENCY = 256
DEFAULT_MAX_ATTEMPTS = RetryPolicy().max_attempts
DEFAULT_TIMEOUT_S = 600.0

_FATAL_HINTS = {
    "invalid_api_key": "check OPENAI_API_KEY (and OPENAI_BASE_URL)",
    "insufficient_quota": "add credit or raise the limit on the account's billing page",
    "billing_hard_limit_reached": "raise the account's spending limit",
    "error_streak": "read the errors file to see why every request failed the same way",
}

_EPILOG = f"""\
INPUT is the OpenAI Batch API format: one JSON object a line, e.g.
  {{"custom_id": "q1", "method": "POST", "url": "/v1/responses",
   "body": {{"model": "gpt-4.1-mini", "input": "Hi"}}}}
The API key is read from OPENAI_API_KEY only; the base URL from --base-url or OPENAI_BASE_URL.

Files:
  OUTPUT  one Batch-output line per successful request, appended as each completes.
  ERRORS  one line per request that failed permanently in THIS run (default:
          <OUTPUT name>.errors.jsonl beside OUTPUT); emptied at the start of every run,
          because failed requests are sent again when you resume.

Resume: run the same command again. Lines whose custom_id already has a success in
OUTPUT are skipped; everything else is sent, including earlier failures. A torn last
line left by a crash is repaired first. Only one run may write an OUTPUT at a time
(lock file OUTPUT.lock); a second one exits 2 without sending anything.

Ctrl-C (or SIGTERM) stops admitting requests and lets those in flight finish for up to
{GRACE_S:g} s; a second Ctrl-C stops at once. Either way the files stay consistent and the
command to resume is printed.

Exit codes:
  0    every line has a success in OUTPUT
  1    finished, but some lines failed permanently (see ERRORS; fix and resume)
  2    invalid input or usage, OUTPUT locked by another run, or no API key: nothing sent
  3    stopped early on a fatal error (invalid key, quota, a streak of identical
       errors): fix the cause and run the same command again to resume
  130  interrupted (Ctrl-C / SIGTERM) and stopped cleanly: run the same command to resume
"""

logger = logging.getLogger("ratelane")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """One ``ratelane run``, resolved: paths, connection and limits.

    ``base_url`` ``None`` means ``OPENAI_BASE_URL`` or the OpenAI default.
    ``resume_command`` is printed when the run stops early (``None``: say
    nothing about resuming, as the demo does).
    """

    input_path: Path
    output_path: Path
    errors_path: Path
    base_url: str | None = None
    model: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float = DEFAULT_TIMEOUT_S
    progress: bool = False
    resume_command: str | None = None


def default_errors_path(output_path: Path) -> Path:
    """``out.jsonl`` -> ``out.errors.jsonl``, in OUTPUT's directory."""
    return output_path.with_name(output_path.stem + ".errors.jsonl")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="send every request of a Batch-format JSONL file, resumably",
        description=(
            "Send every request in INPUT as fast as the rate limits allow, appending each\n"
            "result to OUTPUT as it completes. Re-run the same command to resume."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("input", metavar="INPUT", type=Path, help="requests, OpenAI Batch API JSONL format")
    add(
        "-o",
        "--output",
        metavar="OUTPUT",
        type=Path,
        required=True,
        help="successful results (Batch API output format), also the checkpoint",
    )
    add(
        "--errors",
        metavar="ERRORS",
        type=Path,
        default=None,
        help="permanent failures of this run (default: OUTPUT's name + .errors.jsonl)",
    )
    add(
        "--base-url",
        metavar="URL",
        default=None,
        help=f"API root (default: $OPENAI_BASE_URL or {DEFAULT_BASE_URL})",
    )
    add("--model", metavar="M", default=None, help="model for lines whose body has none")
    add(
        "--max-concurrency",
        metavar="N",
        type=positive_int,
        default=None,
        help=f"requests in flight at most (default {DEFAULT_MAX_CONCURRENCY})",
    )
    add(
        "--rpm",
        metavar="N",
        type=positive_float,
        default=None,
        help="requests-per-minute ceiling (default: learned from the server)",
    )
    add(
        "--tpm",
        metavar="N",
        type=positive_float,
        default=None,
        help="tokens-per-minute ceiling (default: learned from the server)",
    )
    add(
        "--max-attempts",
        metavar="N",
        type=positive_int,
        default=None,
        help=f"attempts per request, the first included (default {DEFAULT_MAX_ATTEMPTS})",
    )
    add(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=None,
        help=f"seconds one attempt may take (default {DEFAULT_TIMEOUT_S:g})",
    )
    add(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is also off when stderr is not a terminal)",
    )
    add(
        "--dry-run",
        action="store_true",
        help="validate INPUT, count lines and estimated tokens; send nothing",
    )
    parser.set_defaults(handler=run)
    return parser


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _program() -> list[str]:
    """How this process was started: ``ratelane`` or ``python -m ratelane``."""
    if Path(sys.argv[0]).name == "__main__.py":
        return ["python", "-m", "ratelane"]
    return ["ratelane"]


def resume_command(args: argparse.Namespace) -> str:
    """The command line that repeats this run (which resumes it), key never included."""
    parts = [*_program(), "run", os.fspath(args.input), "-o", os.fspath(args.output)]
    options: list[tuple[str, object]] = [
        ("--errors", args.errors),
        ("--base-url", args.base_url),
        ("--model", args.model),
        ("--max-concurrency", args.max_concurrency),
        ("--rpm", args.rpm),
        ("--tpm", args.tpm),
        ("--max-attempts", args.max_attempts),
        ("--timeout", args.timeout),
    ]
    for flag, value in options:
        if value is None:
            continue
        parts += [flag, _number(value) if isinstance(value, int | float) else str(value)]
    if args.no_progress:
        parts.append("--no-progress")
    return shlex.join(parts)


def _settings(args: argparse.Namespace) -> RunSettings:
    output_path: Path = args.output
    return RunSettings(
        input_path=args.input,
        output_path=output_path,
        errors_path=args.errors if args.errors is not None else default_errors_path(output_path),
        base_url=args.base_url,
        model=args.model,
        max_concurrency=args.max_concurrency or DEFAULT_MAX_CONCURRENCY,
        rpm=args.rpm,
        tpm=args.tpm,
        max_attempts=args.max_attempts or DEFAULT_MAX_ATTEMPTS,
        timeout_s=args.timeout or DEFAULT_TIMEOUT_S,
        progress=not args.no_progress and sys.stderr.isatty(),
        resume_command=resume_command(args),
    )


def _say(message: str) -> None:
    print(f"ratelane: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the handler


def run(args: argparse.Namespace) -> int:
    """``ratelane run``: exit code per the epilog."""
    settings = _settings(args)
    problem = _path_problem(settings)
    if problem is not None:
        _say(problem)
        return EXIT_USAGE
    if args.dry_run:
        return _dry_run(settings)
    api_key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not api_key:
        _say(
            "no API key: OPENAI_API_KEY is not set. HINT: export OPENAI_API_KEY=sk-... "
            "(the key is read from the environment only, never from a flag); "
            "to try ratelane without a key, run `ratelane demo`"
        )
        return EXIT_USAGE
    return run_batch(settings, api_key=api_key)


def _path_problem(settings: RunSettings) -> str | None:
    paths = {
        "INPUT": settings.input_path,
        "OUTPUT": settings.output_path,
        "ERRORS": settings.errors_path,
    }
    resolved = {name: os.path.realpath(path) for name, path in paths.items()}
    for first, second in (("INPUT", "OUTPUT"), ("INPUT", "ERRORS"), ("OUTPUT", "ERRORS")):
        if resolved[first] == resolved[second]:
            return (
                f"{first} and {second} are the same file ({paths[first]}). "
                f"HINT: give {second} another name"
            )
    if settings.output_path.is_dir():
        return f"OUTPUT {settings.output_path} is a directory. HINT: name a file in it"
    for name in ("OUTPUT", "ERRORS"):
        directory = paths[name].parent
        if not directory.is_dir():
            return f"{name}'s directory {directory} does not exist. HINT: create it first"
    return None


def _validate(path: Path) -> ValidationReport | None:
    """The report for INPUT, or ``None`` (after saying why) if it cannot be read."""
    try:
        return validate_batch_file(path, max_reported=10)
    except FileNotFoundError:
        _say(f"INPUT {path} does not exist")
    except IsADirectoryError:
        _say(f"INPUT {path} is a directory; give a .jsonl file")
    except OSError as exc:
        _say(f"cannot read INPUT {path}: {exc.strerror or exc}")
    return None


def _dry_run(settings: RunSettings) -> int:
    report = _validate(settings.input_path)
    if report is None:
        return EXIT_USAGE
    if not report.ok:
        print(report.describe(), file=sys.stderr)
        return EXIT_USAGE
    done = DoneSet.from_output(settings.output_path)
    to_send = report.lines
    missing_model = 0
    if len(done) or settings.model is None:
        to_send = 0
        for line in iter_batch_requests(settings.input_path, skip=done.__contains__):
            to_send += 1
            missing_model += "model" not in line.body
    print(report.describe())
    print(
        f"OUTPUT {settings.output_path}: {report.lines - to_send:,} of {report.lines:,} lines "
        f"already have a success; {to_send:,} would be sent"
    )
    if missing_model and settings.model is None:
        print(
            f'warning: {missing_model:,} of them have no "model" in their body and would '
            "fail. HINT: pass --model M"
        )
    print("dry run: nothing was sent")
    return EXIT_OK


# --------------------------------------------------------------------------- one run


def run_batch(settings: RunSettings, *, api_key: str) -> int:
    """Validate, lock, resume and send; print the summary; return the exit code.

    Shared by ``ratelane run`` and ``ratelane demo``.
    """
    try:
        client = Client(
            api_key=api_key,
            base_url=settings.base_url,
            rpm=settings.rpm,
            tpm=settings.tpm,
            max_concurrency=settings.max_concurrency,
            retry=RetryPolicy(max_attempts=settings.max_attempts),
            timeout_s=settings.timeout_s,
        )
    except ConfigurationError as exc:
        _say(str(exc))
        return EXIT_USAGE
    report = _validate(settings.input_path)
    if report is None:
        return EXIT_USAGE
    if not report.ok:
        print(report.describe(), file=sys.stderr)
        _say("nothing was sent")
        return EXIT_USAGE
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(OutputLock(settings.output_path))
            writer = stack.enter_context(
                ResultWriter(
                    settings.output_path, settings.errors_path, fsync_interval_s=FSYNC_INTERVAL_S
                )
            )
        except (OutputLockedError, ConfigurationError) as exc:
            _say(f"{exc} Nothing was sent.")
            return EXIT_USAGE
        except OSError as exc:
            _say(
                f"cannot open {exc.filename or 'OUTPUT'}: {exc.strerror or exc}. Nothing was sent."
            )
            return EXIT_USAGE
        stack.enter_context(_log_to_stderr())
        done = DoneSet.from_output(settings.output_path)
        outcome = asyncio.run(_drive(client, settings, report, writer, done))
    return _finish(settings, report, outcome)


@dataclass(slots=True)
class _Outcome:
    stats: RunStats
    skipped: int
    exhausted: bool
    signals: int
    cancelled: bool
    abandoned: int
    fatal: FatalError | None
    error: BaseException | None
    learned_rpm: float | None
    learned_tpm: float | None


class _Feed:
    """The requests still to send, read lazily from INPUT as the engine's workers pull.

    Counts the lines skipped as already done and the requests handed out;
    ``on_exhausted`` runs once when INPUT has been read to the end.
    """

    __slots__ = ("_done", "_lines", "_on_exhausted", "exhausted", "sent", "skipped")

    def __init__(
        self,
        path: Path,
        done: DoneSet,
        *,
        default_model: str | None,
        on_exhausted: Callable[[_Feed], None],
    ) -> None:
        self._done = done
        self._on_exhausted = on_exhausted
        self._lines: Iterator[BatchLine] = iter_batch_requests(
            path, skip=self._skip, default_model=default_model
        )
        self.skipped = 0
        self.sent = 0
        self.exhausted = False

    def _skip(self, custom_id: str) -> bool:
        if custom_id in self._done:
            self.skipped += 1
            return True
        return False

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> tuple[int, Request]:
        try:
            line = next(self._lines)
        except StopIteration:
            if not self.exhausted:
                self.exhausted = True
                self._on_exhausted(self)
            raise
        self.sent += 1
        return line.line_number, line.to_request()


class _Progress:
    """The tqdm bar on stderr: one tick per result, the postfix text every POSTFIX_INTERVAL_S."""

    def __init__(self, run: Run, *, total: int, enabled: bool) -> None:
        self._run = run
        self._enabled = enabled
        self._next_postfix = 0.0
        self.bar = tqdm(
            total=total,
            unit="req",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.25,
            smoothing=0.05,
        )

    def tick(self) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now >= self._next_postfix:
            # Before update(), so the refresh it may trigger shows current counts.
            self._next_postfix = now + POSTFIX_INTERVAL_S
            self.bar.set_postfix_str(self.postfix(), refresh=False)
        self.bar.update(1)

    def postfix(self) -> str:
        stats = self._run.stats
        governor = self._run.engine.governor
        return progress_postfix(
            succeeded=stats.succeeded,
            failed=stats.failed,
            requests_per_minute=governor.requests_per_minute,
            tokens_per_minute=governor.tokens_per_minute,
            cooldowns=governor.cooldowns,
            cooling_down=governor.cooling_down,
        )

    def exhausted(self, feed: _Feed) -> None:
        """INPUT is read: the exact number of requests this run sends is known now."""
        if self._enabled:
            self.bar.total = feed.sent
            self.bar.refresh()

    def close(self) -> None:
        if self._enabled:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
        self.bar.close()


class _Interrupts:
    """SIGINT/SIGTERM: the first stops admission and starts the grace timer, the next cancels."""

    def __init__(self, run: Run, task: asyncio.Future[Any], feed: _Feed) -> None:
        self._run = run
        self._task = task
        self._feed = feed
        self._timer: asyncio.TimerHandle | None = None
        self.count = 0
        self.abandoned = 0

    def _in_flight(self) -> int:
        return max(0, self._feed.sent - self._run.stats.completed)

    def __call__(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count > 1:
            self._cancel(f"second {name}")
            return
        self._run.stop()
        _write(
            f"{name}: stopping; no new requests are sent. Waiting up to {GRACE_S:g} s for "
            f"{self._in_flight():,} in flight (press Ctrl-C again to stop at once)"
        )
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(GRACE_S, self._cancel, f"{GRACE_S:g} s grace period over")

    def _cancel(self, why: str) -> None:
        if self._task.done():
            return
        self.abandoned = self._in_flight()
        _write(
            f"{why}: abandoning {self.abandoned:,} requests in flight "
            "(they are sent again on resume)"
        )
        self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _write(message: str) -> None:
    tqdm.write(f"ratelane: {message}", file=sys.stderr)


async def _drive(
    client: Client,
    settings: RunSettings,
    report: ValidationReport,
    writer: ResultWriter,
    done: DoneSet,
) -> _Outcome:
    loop = asyncio.get_running_loop()
    async with client:
        run = client.engine.new_run(max_concurrency=client.max_concurrency)
        progress = _Progress(run, total=max(0, report.lines - len(done)), enabled=settings.progress)
        feed = _Feed(
            settings.input_path,
            done,
            default_model=settings.model,
            on_exhausted=progress.exhausted,
        )

        async def sink(result: Result) -> None:
            writer.write(result)
            progress.tick()

        task = asyncio.ensure_future(run.drive(feed, sink))
        interrupts = _Interrupts(run, task, feed)
        handled = (signal.SIGINT, signal.SIGTERM)
        for signum in handled:
            loop.add_signal_handler(signum, interrupts, signum)
        try:
            await asyncio.wait({task})
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
            interrupts.close()
            progress.close()
        fatal: FatalError | None = None
        error: BaseException | None = None
        if not task.cancelled():
            exc = task.exception()
            if isinstance(exc, FatalError):
                fatal = exc
            elif exc is not None:
                error = exc
        return _Outcome(
            stats=run.stats,
            skipped=feed.skipped if feed.exhausted else max(feed.skipped, len(done)),
            exhausted=feed.exhausted,
            signals=interrupts.count,
            cancelled=task.cancelled(),
            abandoned=interrupts.abandoned,
            fatal=fatal,
            error=error,
            learned_rpm=run.engine.governor.learned_rpm,
            learned_tpm=run.engine.governor.learned_tpm,
        )


def _finish(settings: RunSettings, report: ValidationReport, outcome: _Outcome) -> int:
    stats = outcome.stats
    complete = outcome.exhausted and not outcome.cancelled
    resume = settings.resume_command
    hint: str | None = None
    if outcome.error is not None:
        error = outcome.error
        if isinstance(error, InputError):
            headline = f"stopped: INPUT changed while running ({error})"
        else:
            headline = f"stopped by an unexpected error: {type(error).__name__}: {error}"
        code = EXIT_FATAL
        hint = "fix the cause, then run the same command again to resume"
    elif outcome.fatal is not None:
        fatal = outcome.fatal
        headline = f"stopped early ({fatal.reason}): {fatal}"
        code = EXIT_FATAL
        cause = _FATAL_HINTS.get(fatal.reason, "fix the cause")
        hint = f"{cause}, then run the same command again to resume"
    elif outcome.signals and not complete:
        headline = "interrupted; every result received so far is saved"
        code = EXIT_INTERRUPTED
        hint = "run the same command again to resume"
    elif stats.failed:
        headline = (
            f"finished: {stats.failed:,} {'line' if stats.failed == 1 else 'lines'} "
            "failed permanently (see ERRORS)"
        )
        code = EXIT_FAILED
        hint = "fix those lines in INPUT, then run the same command again to retry only them"
    elif stats.completed == 0:
        headline = "nothing to do: every line already has a success in OUTPUT"
        code = EXIT_OK
    else:
        headline = "done: every line succeeded"
        code = EXIT_OK
    remaining = max(0, report.lines - outcome.skipped - stats.succeeded)
    summary = RunSummary(
        headline=f"ratelane: {headline}",
        lines=report.lines,
        skipped=outcome.skipped,
        remaining=remaining,
        stats=stats,
        output_path=settings.output_path,
        errors_path=settings.errors_path,
        learned_rpm=outcome.learned_rpm,
        learned_tpm=outcome.learned_tpm,
    )
    print(format_summary(summary), file=sys.stderr)
    if hint is not None and resume is not None:
        print(f"HINT: {hint}:\n  {resume}", file=sys.stderr)
    sys.stderr.flush()
    return code


class _TqdmHandler(logging.Handler):
    """Library warnings on stderr, above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    handler = _TqdmHandler(logging.WARNING)
    handler.setFormatter(logging.Formatter("ratelane: warning: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
