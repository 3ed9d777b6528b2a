"""``ratelane run``: a thin shell over :class:`ratelane.FileRun` (``_files/file_run.py``).

The file run (validation, lock, resume, checkpointing, fsync) is the
library's; this module only parses flags, checks the API key is in the
environment, owns the terminal (progress bar, signals, summary text) and maps
the :class:`FileRunSummary` to an exit code.

Signals: the first SIGINT/SIGTERM stops admitting new requests and gives
those in flight ``GRACE_S`` seconds; a second one (or the end of the grace)
cancels them (``FileRun.stop()`` then ``FileRun.abort()``). Either way every
line already written is whole, the files are fsync-ed, and the command to
resume is printed.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ratelane._core.argtypes import positive_float, positive_int
from ratelane._core.config import RetryPolicy
from ratelane._core.errors import ConfigurationError, InputError, OutputLockedError
from ratelane._files.checkpoint import DoneSet
from ratelane._files.file_run import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    ExitReason,
    FileRun,
    FileRunOptions,
    FileRunSummary,
    InvalidInputError,
    check_input,
    check_paths,
    default_errors_path,
    empty_input,
)
from ratelane._files.input import iter_batch_requests
from ratelane._files.shard import Shard, shard_lines
from ratelane._http.wire import DEFAULT_BASE_URL

from .main import EXIT_FAILED, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .many_machines import add_many_machines_arguments, many_machines_flags
from .summary import RunSummary, format_summary, stop_cause

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
DEFAULT_MAX_ATTEMPTS = RetryPolicy().max_attempts

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
    # Issue 13: one budget shared through Redis, and this process's shard of INPUT.
    redis_url: str | None = None
    shard: str | None = None


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
    add_many_machines_arguments(parser)  # issue 13
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
    parts += many_machines_flags(args)  # issue 13
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
        redis_url=args.redis_url,
        shard=args.shard,
    )


def _say(message: str) -> None:
    print(f"ratelane: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the handler


def run(args: argparse.Namespace) -> int:
    """``ratelane run``: exit code per the epilog."""
    settings = _settings(args)
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


def _dry_run(settings: RunSettings) -> int:
    try:
        check_paths(settings.input_path, settings.output_path, settings.errors_path)
        report = check_input(settings.input_path)
    except ConfigurationError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except InvalidInputError as exc:
        _report_invalid(exc)
        return EXIT_USAGE
    if report.lines == 0:
        _say(str(empty_input(settings.input_path)))
        return EXIT_USAGE
    done = DoneSet.from_output(settings.output_path)
    to_send = report.lines
    missing_model = 0
    shard = Shard.parse(settings.shard) if settings.shard else None  # issue 13
    if len(done) or settings.model is None or shard is not None:
        to_send = 0
        for line in iter_batch_requests(settings.input_path, skip=_skip(done, shard)):
            to_send += 1
            missing_model += "model" not in line.body
    print(report.describe())
    lines, which = report.lines, "lines"
    if shard is not None:
        lines, which = shard_lines(settings.input_path, shard), f"lines of shard {shard}"
    print(
        f"OUTPUT {settings.output_path}: {lines - to_send:,} of {lines:,} {which} "
        f"already have a success; {to_send:,} would be sent"
    )
    if missing_model and settings.model is None:
        print(
            f'warning: {missing_model:,} of them have no "model" in their body and would '
            "fail. HINT: pass --model M"
        )
    print("dry run: nothing was sent")
    return EXIT_OK


def _skip(done: DoneSet, shard: Shard | None) -> Callable[[str], bool]:
    """Lines a dry run does not count: done ones, and other shards' (issue 13)."""
    if shard is None:
        return done.__contains__
    return lambda custom_id: custom_id in done or custom_id not in shard


def _report_invalid(exc: InvalidInputError) -> None:
    if exc.report is not None:
        print(exc.report.describe(), file=sys.stderr)
        _say("nothing was sent")
    else:
        _say(str(exc))


# --------------------------------------------------------------------------- one run


def run_batch(settings: RunSettings, *, api_key: str) -> int:
    """Run the file through :class:`FileRun`; print the summary; return the exit code.

    Shared by ``ratelane run`` and ``ratelane demo``.
    """
    try:
        options = FileRunOptions(
            api_key=api_key,
            base_url=settings.base_url,
            model=settings.model,
            rpm=settings.rpm,
            tpm=settings.tpm,
            max_concurrency=settings.max_concurrency,
            retry=RetryPolicy(max_attempts=settings.max_attempts),
            timeout_s=settings.timeout_s,
            progress=settings.progress,
            limiter=settings.redis_url,  # None: RATELANE_REDIS_URL or the local governor
            shard=Shard.parse(settings.shard) if settings.shard else None,
        )
    except ConfigurationError as exc:
        _say(str(exc))
        return EXIT_USAGE
    file_run = FileRun(
        settings.input_path,
        settings.output_path,
        errors=settings.errors_path,
        options=options,
    )
    try:
        with _log_to_stderr():
            summary = asyncio.run(_drive(file_run))
    except (ConfigurationError, OutputLockedError) as exc:
        _say(f"{exc} Nothing was sent." if isinstance(exc, OutputLockedError) else str(exc))
        return EXIT_USAGE
    except InvalidInputError as exc:
        _report_invalid(exc)
        return EXIT_USAGE
    except OSError as exc:
        _say(f"cannot open {exc.filename or 'OUTPUT'}: {exc.strerror or exc}. Nothing was sent.")
        return EXIT_USAGE
    except Exception as exc:  # reported like a fatal stop: the files are consistent
        return _unexpected(settings, exc)
    return _finish(settings, summary)


class _Interrupts:
    """SIGINT/SIGTERM: the first stops admission and starts the grace timer, the next aborts."""

    def __init__(self, file_run: FileRun) -> None:
        self._run = file_run
        self._timer: asyncio.TimerHandle | None = None
        self.count = 0

    def __call__(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count > 1:
            self._abort(f"second {name}")
            return
        self._run.stop()
        _write(
            f"{name}: stopping; no new requests are sent. Waiting up to {GRACE_S:g} s for "
            f"{self._run.in_flight:,} in flight (press Ctrl-C again to stop at once)"
        )
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(GRACE_S, self._abort, f"{GRACE_S:g} s grace period over")

    def _abort(self, why: str) -> None:
        in_flight = self._run.in_flight
        if self._run.abort():
            _write(
                f"{why}: abandoning {in_flight:,} requests in flight "
                "(they are sent again on resume)"
            )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _write(message: str) -> None:
    tqdm.write(f"ratelane: {message}", file=sys.stderr)


async def _drive(file_run: FileRun) -> FileRunSummary:
    loop = asyncio.get_running_loop()
    interrupts = _Interrupts(file_run)
    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, interrupts, signum)
    try:
        return await file_run.run()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        interrupts.close()


def _unexpected(settings: RunSettings, error: Exception) -> int:
    if isinstance(error, InputError):
        headline = f"stopped: INPUT changed while running ({error})"
    else:
        headline = f"stopped by an unexpected error: {type(error).__name__}: {error}"
    print(f"ratelane: {headline}", file=sys.stderr)
    _print_hint(settings, "fix the cause, then run the same command again to resume")
    return EXIT_FATAL


def _print_hint(settings: RunSettings, hint: str) -> None:
    if settings.resume_command is not None:
        print(f"HINT: {hint}:\n  {settings.resume_command}", file=sys.stderr)
    sys.stderr.flush()


def _finish(settings: RunSettings, summary: FileRunSummary) -> int:
    hint: str | None = None
    reason = summary.reason
    if reason is ExitReason.FATAL:
        label, cause = stop_cause(summary.stop_reason, summary.stop_status)
        headline = f"stopped early ({label}): {summary.stop_message}"
        code = EXIT_FATAL
        hint = f"{cause}, then run the same command again to resume"
    elif reason is ExitReason.STOPPED:
        headline = "interrupted; every result received so far is saved"
        code = EXIT_INTERRUPTED
        hint = "run the same command again to resume"
    elif reason is ExitReason.SOME_FAILED:
        failed = summary.failed
        headline = (
            f"finished: {failed:,} {'line' if failed == 1 else 'lines'} "
            "failed permanently (see ERRORS)"
        )
        code = EXIT_FAILED
        hint = "fix those lines in INPUT, then run the same command again to retry only them"
    elif summary.stats.completed == 0:
        headline = "nothing to do: every line already has a success in OUTPUT"
        code = EXIT_OK
    else:
        headline = "done: every line succeeded"
        code = EXIT_OK
    print(format_summary(RunSummary.of(summary, headline=f"ratelane: {headline}")), file=sys.stderr)
    if hint is not None:
        _print_hint(settings, hint)
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
