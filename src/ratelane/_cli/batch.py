"""``ratelane batch status|cancel OUTPUT``: the batches of a ``--via batch`` run.

Both read ``<OUTPUT>.batches.json`` and take the key and base URL as ``run``
does (``OPENAI_API_KEY``; ``--base-url`` or ``OPENAI_BASE_URL``). Both exit 0
when the server answered every query (or cancel), whatever the batches'
states; ``status`` changes nothing on the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from ratelane._core.errors import APIError, ConfigurationError, TransportError
from ratelane._files.batch_control import BatchView, cancel_batches, eta_s, query_batches
from ratelane._files.file_run import FileRunOptions
from ratelane._http.wire import DEFAULT_BASE_URL

from .main import EXIT_FATAL, EXIT_OK, EXIT_USAGE

__all__ = ["add_parser", "format_views", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "batch",
        help="status or cancel of the batches of a `run --via batch`",
        description="Look at, or cancel, the Batch API batches of `ratelane run --via batch`.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, text in (
        ("status", "each batch: status, counts, age, ETA (changes nothing)"),
        ("cancel", "cancel every unfinished batch; the next run resubmits what they left"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("output", metavar="OUTPUT", type=Path, help="the run's OUTPUT file")
        action.add_argument(
            "--base-url",
            metavar="URL",
            default=None,
            help=f"API root (default: $OPENAI_BASE_URL or {DEFAULT_BASE_URL})",
        )
    parser.set_defaults(handler=run)
    return parser


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes = seconds / 60
    return f"{minutes:.0f}m" if minutes < 120 else f"{minutes / 60:.1f}h"


def format_views(views: list[BatchView], now_s: float) -> str:
    """One row per chunk: batch id, status, completed/failed/total, age, ETA; then totals."""
    rows = [("batch", "status", "completed", "failed", "total", "age", "eta")]
    statuses: dict[str, int] = {}
    for view in views:
        chunk, info = view.chunk, view.info
        status = view.status
        statuses[status] = statuses.get(status, 0) + 1
        if info is not None:
            counts = info.request_counts
            completed, failed, total = counts.completed, counts.failed, counts.total or chunk.lines
            age = None if info.created_at is None else now_s - info.created_at
            eta = eta_s(info, now_s)
        else:
            completed, failed, total = chunk.delivered, chunk.errors, chunk.lines
            age = None if chunk.created_at is None else now_s - chunk.created_at
            eta = 0.0 if chunk.merged else None
        rows.append(
            (
                chunk.batch_id or f"({chunk.name})",
                status,
                f"{completed:,}",
                f"{failed:,}",
                f"{total:,}",
                _age(age),
                "-" if eta is None else ("done" if eta == 0 else _age(eta)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
    summary = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    return f"{table}\n{len(views)} {'batch' if len(views) == 1 else 'batches'}: {summary}"


def _say(message: str) -> None:
    print(f"ratelane: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    api_key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not api_key:
        _say("no API key: OPENAI_API_KEY is not set. HINT: export OPENAI_API_KEY=sk-...")
        return EXIT_USAGE
    options = FileRunOptions(api_key=api_key, base_url=args.base_url)
    try:
        if args.action == "status":
            views = asyncio.run(query_batches(args.output, options))
            print(format_views(views, time.time()))
            return EXIT_OK
        cancelled = asyncio.run(cancel_batches(args.output, options))
    except ConfigurationError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except (APIError, TransportError) as exc:
        _say(f"{exc}")
        return EXIT_FATAL
    for view in cancelled:
        print(f"{view.chunk.batch_id}: {view.status}")
    print(
        f"{len(cancelled)} {'batch' if len(cancelled) == 1 else 'batches'} cancelled or "
        "finishing. HINT: run the same `ratelane run ... --via batch` command to collect "
        "what they delivered; it resubmits the rest"
    )
    return EXIT_OK
