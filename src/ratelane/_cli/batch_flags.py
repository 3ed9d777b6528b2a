"""``ratelane run``'s Batch API mode flags (``--via batch`` and the rest), in their own group."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from ratelane._core.argtypes import positive_float, positive_int
from ratelane._files.batch_options import (
    COMPLETION_WINDOWS,
    DEFAULT_POLL_INTERVAL_S,
    MAX_BATCH_BYTES,
    MAX_BATCH_LINES,
    BatchRunOptions,
)
from ratelane._files.file_run import FileRunSummary

__all__ = ["add_batch_flags", "batch_flag_words", "batch_settings", "detached_message"]

_DESCRIPTION = """\
Send INPUT through OpenAI's Batch API instead: half the price, results within the
completion window (usually much sooner). Same INPUT, OUTPUT, ERRORS, resume and exit
codes; the batches are recorded in OUTPUT.batches.json, so running the same command
again (after a crash, a reboot or --detach) re-attaches to them. Switch modes on one
OUTPUT at any time: --via realtime sends whatever the batches have not delivered."""


def _at_most(cap: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > cap:
            raise argparse.ArgumentTypeError(f"at most {cap:,} (the Batch API's limit), got {text}")
        return value

    return parse


def add_batch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Batch API mode", _DESCRIPTION)
    add = group.add_argument
    add(
        "--via",
        choices=("realtime", "batch"),
        default="realtime",
        help="realtime (default): send each request now; batch: through /v1/batches",
    )
    add(
        "--completion-window",
        choices=COMPLETION_WINDOWS,
        default=None,
        help="the batches' completion window (default 24h, the only one offered)",
    )
    add(
        "--detach",
        action="store_true",
        help="upload and create every batch, then exit 0; run again without it to collect",
    )
    add(
        "--poll-interval",
        metavar="SECONDS",
        type=positive_float,
        default=None,
        help=f"shortest wait between polls (default {DEFAULT_POLL_INTERVAL_S:g}; backs off "
        "while nothing changes)",
    )
    add(
        "--max-batch-lines",
        metavar="N",
        type=_at_most(MAX_BATCH_LINES),
        default=None,
        help=f"lines per batch (default and maximum {MAX_BATCH_LINES:,})",
    )
    add(
        "--max-batch-bytes",
        metavar="N",
        type=_at_most(MAX_BATCH_BYTES),
        default=None,
        help=f"bytes per uploaded file (default and maximum {MAX_BATCH_BYTES:,})",
    )
    add(
        "--max-enqueued-tokens",
        metavar="N",
        type=positive_int,
        default=None,
        help="keep this run's unfinished batches of one model under N estimated input "
        "tokens (your organization's enqueued-token limit)",
    )
    add(
        "--fallback",
        choices=("batch", "realtime"),
        default=None,
        help="lines an expired or cancelled batch did not run: in a new batch (default) "
        "or at once through the real-time API",
    )


def _flags(args: argparse.Namespace) -> list[tuple[str, Any]]:
    return [
        ("--completion-window", args.completion_window),
        ("--poll-interval", args.poll_interval),
        ("--max-batch-lines", args.max_batch_lines),
        ("--max-batch-bytes", args.max_batch_bytes),
        ("--max-enqueued-tokens", args.max_enqueued_tokens),
        ("--fallback", args.fallback),
    ]


def batch_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``RunSettings`` fields from the flags: ``via`` and ``batch``."""
    if args.via != "batch":
        given = [flag for flag, value in _flags(args) if value is not None]
        if args.detach:
            given.insert(0, "--detach")
        if given:
            print(
                f"ratelane: warning: {', '.join(given)} only apply with --via batch; ignored",
                file=sys.stderr,
            )
        return {"via": "realtime", "batch": None}
    values: dict[str, Any] = {
        "completion_window": args.completion_window,
        "poll_interval_s": args.poll_interval,
        "max_batch_lines": args.max_batch_lines,
        "max_batch_bytes": args.max_batch_bytes,
        "max_enqueued_tokens": args.max_enqueued_tokens,
        "fallback": args.fallback,
    }
    options = BatchRunOptions(
        detach=args.detach, **{name: value for name, value in values.items() if value is not None}
    )
    return {"via": "batch", "batch": options}


def batch_flag_words(args: argparse.Namespace) -> list[str]:
    """The batch flags of the command that resumes (collects) this run: all but --detach."""
    if args.via != "batch":
        return []
    words = ["--via", "batch"]
    for flag, value in _flags(args):
        if value is not None:
            text = (
                str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
            )
            words += [flag, text]
    return words


def detached_message(summary: FileRunSummary, resume_command: str | None) -> str:
    """The headline after ``--detach``: what runs where, and how to check and collect."""
    output = os.fspath(summary.output_path)
    pending = summary.batches_pending
    lines = [
        f"detached: {pending:,} {'batch runs' if pending == 1 else 'batches run'} on the "
        f"server (recorded in {output}.batches.json)",
        f"  check on them:  ratelane batch status {output}",
    ]
    if resume_command is not None:
        lines.append(f"  collect them:   {resume_command}")
    return "\n".join(lines)
