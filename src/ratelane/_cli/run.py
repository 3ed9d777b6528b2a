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
from typing import Any, Literal

from tqdm import tqdm

from ratelane._api.operating import price_table
from ratelane._core.argtypes import positive_float, positive_int
from ratelane._core.config import RetryPolicy
from ratelane._core.errors import ConfigurationError, InputError, OutputLockedError
from ratelane._core.prices import PRICES_AS_OF
from ratelane._files.batch_options import BatchRunOptions
from ratelane._files.checkpoint import DoneSet
from ratelane._files.file_run import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    ExitReason,
    FileRun,
    FileRunOptions,
    FileRunSummary,
    InvalidInputError,
    check_chains,
    check_input,
    check_paths,
    default_errors_path,
    empty_input,
)
from ratelane._files.input import iter_batch_requests
from ratelane._files.projection import project_cost
from ratelane._files.shard import Shard, shard_lines
from ratelane._http.wire import DEFAULT_BASE_URL

from .batch_flags import add_batch_flags, batch_flag_words, batch_settings, detached_message
from .main import EXIT_FAILED, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .many_machines import add_many_machines_arguments, many_machines_flags
from .summary import (
    RunSummary,
    failure_advice,
    format_summary,
    raised_cap,
    spent_text,
    stop_cause,
)

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
       errors, the --max-cost cap): fix the cause (or raise the cap) and run the
       same command again to resume
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
    # Batch API mode (issue 11): --via batch and its flags (batch_flags.py).
    via: Literal["realtime", "batch"] = "realtime"
    batch: BatchRunOptions | None = None
    background: bool = False  # background mode (issue 12)
    cancel_on_exit: bool = False
    # Operating a run (issue 14): --prices, --max-cost, --cache, --no-breaker,
    # --no-remember-limits.
    prices_path: Path | None = None
    max_cost: float | None = None
    cache_path: Path | None = None
    breaker: bool = True
    remember_limits: bool = True
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
        help="validate INPUT, count lines and estimated tokens, project the cost; send nothing",
    )
    add_batch_flags(parser)  # Batch API mode (issue 11)
    # Background mode (issue 12)
    add(
        "--background",
        action="store_true",
        help="send every line with background: true and poll it to the end; the response "
        "ids go to OUTPUT.pending.jsonl first, so a resume re-attaches instead of paying twice",
    )
    add(
        "--cancel-on-exit",
        action="store_true",
        help="on Ctrl-C/SIGTERM, cancel background responses still running "
        "(default: leave them running; the resume re-attaches)",
    )
    _add_operating_flags(add)
    add_many_machines_arguments(parser)  # issue 13
    parser.set_defaults(handler=run)
    return parser


def _add_operating_flags(add: Any) -> None:
    """Issue 14's flags: spend, cache, breaker, remembered limits."""
    add(
        "--prices",
        metavar="FILE",
        type=Path,
        default=None,
        help='JSON prices over the built-in table: {"model": {"input": 0.4, '
        '"cached_input": 0.1, "output": 1.6}} (USD per 1M tokens)',
    )
    add(
        "--max-cost",
        metavar="USD",
        type=positive_float,
        default=None,
        help="stop (exit 3, resumable) before what OUTPUT has cost could pass USD",
    )
    add(
        "--cache",
        metavar="PATH",
        type=Path,
        default=None,
        help="SQLite response cache: identical requests are answered from it, not sent "
        "(for deterministic prompts)",
    )
    add(
        "--no-breaker",
        action="store_true",
        help="no circuit breaker (by default an outage pauses the run instead of "
        "spending attempts)",
    )
    add(
        "--no-remember-limits",
        action="store_true",
        help="neither use nor save the rate limits learned by earlier runs "
        "(kept in $RATELANE_CACHE_DIR or ~/.cache/ratelane/limits.json)",
    )


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
        ("--prices", args.prices),
        ("--max-cost", args.max_cost),
        ("--cache", args.cache),
    ]
    for flag, value in options:
        if value is None:
            continue
        parts += [flag, _number(value) if isinstance(value, int | float) else str(value)]
    if args.no_progress:
        parts.append("--no-progress")
    parts += batch_flag_words(args)  # Batch API mode (issue 11)
    for flag, on in (("--background", args.background), ("--cancel-on-exit", args.cancel_on_exit)):
        if on:  # background mode (issue 12)
            parts.append(flag)
    parts += [flag for flag, on in _OFF_FLAGS if getattr(args, on)]
    parts += many_machines_flags(args)  # issue 13
    return shlex.join(parts)


_OFF_FLAGS = (("--no-breaker", "no_breaker"), ("--no-remember-limits", "no_remember_limits"))


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
        **batch_settings(args),  # Batch API mode (issue 11)
        background=args.background,
        cancel_on_exit=args.cancel_on_exit,
        prices_path=args.prices,
        max_cost=args.max_cost,
        cache_path=args.cache,
        breaker=not args.no_breaker,
        remember_limits=not args.no_remember_limits,
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
        if report.lines:
            check_chains(settings.input_path)  # chains (issue 12): exit 2 like any bad line
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
    try:  # the projected cost range (issue 14)
        print(_projection(settings, _skip(done, shard) if len(done) or shard else None))
    except ConfigurationError as exc:
        _say(str(exc))
        return EXIT_USAGE
    print("dry run: nothing was sent")
    return EXIT_OK


def _projection(settings: RunSettings, skip: Callable[[str], bool] | None) -> str:
    projection = project_cost(
        settings.input_path,
        price_table(settings.prices_path),
        skip=skip,
        default_model=settings.model,
    )
    text = projection.describe() + f" (built-in prices as of {PRICES_AS_OF})"
    if settings.max_cost is not None and projection.high_usd > settings.max_cost:
        text += (
            f"\nnote: --max-cost ${settings.max_cost:,.4f} is below the high end: the run may "
            "stop there (exit 3), resumable with a higher cap"
        )
    return text


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
            via=settings.via,  # Batch API mode (issue 11)
            batch=settings.batch,
            background=settings.background,
            cancel_on_exit=settings.cancel_on_exit,
            prices=settings.prices_path,
            max_cost=settings.max_cost,
            cache=settings.cache_path,
            breaker=settings.breaker,
            remember_limits=settings.remember_limits,
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
    if reason is ExitReason.FATAL and summary.stop_reason == "max_cost":  # issue 14
        headline = (
            f"stopped at the spend cap: {spent_text(summary.spent_usd, summary.max_cost_usd)}"
        )
        code = EXIT_FATAL
        _print_summary(summary, headline)
        _print_raised_cap(settings, summary)
        return code
    if reason is ExitReason.FATAL:
        label, cause = stop_cause(summary.stop_reason, summary.stop_status)
        headline = f"stopped early ({label}): {summary.stop_message}"
        code = EXIT_FATAL
        hint = f"{cause}, then run the same command again to resume"
    elif reason is ExitReason.DETACHED:  # Batch API mode (issue 11)
        headline = detached_message(summary, settings.resume_command)
        code = EXIT_OK
    elif reason is ExitReason.STOPPED:
        headline = "interrupted; every result received so far is saved"
        code = EXIT_INTERRUPTED
        hint = "run the same command again to resume"
    elif reason is ExitReason.SOME_FAILED:
        headline, hint = failure_advice(summary.failed, summary.stats.failed_transient)
        code = EXIT_FAILED
    elif summary.stats.completed == 0:
        headline = "nothing to do: every line already has a success in OUTPUT"
        code = EXIT_OK
    else:
        headline = "done: every line succeeded"
        code = EXIT_OK
    _print_summary(summary, headline)
    if hint is not None:
        _print_hint(settings, hint)
    return code


def _print_summary(summary: FileRunSummary, headline: str) -> None:
    print(format_summary(RunSummary.of(summary, headline=f"ratelane: {headline}")), file=sys.stderr)


def _print_raised_cap(settings: RunSettings, summary: FileRunSummary) -> None:
    """The spend cap stopped the run: show how to continue with a higher one."""
    command = settings.resume_command
    if command is None:
        return
    cap = summary.max_cost_usd or 0.0
    done = summary.skipped + summary.succeeded
    higher = raised_cap(cap, summary.spent_usd or 0.0, done=done, remaining=summary.remaining)
    parts = shlex.split(command)
    if "--max-cost" in parts:
        parts[parts.index("--max-cost") + 1] = _number(higher)
    else:
        parts += ["--max-cost", _number(higher)]
    print(
        f"HINT: {summary.remaining:,} lines still need a success; to continue, run again "
        "with a higher cap (what OUTPUT already cost counts against it; this one allows for "
        "the lines left at the average cost so far), e.g.:\n  "
        f"{shlex.join(parts)}",
        file=sys.stderr,
    )
    sys.stderr.flush()


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
