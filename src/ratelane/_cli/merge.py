"""``ratelane merge``: put the outputs of sharded runs back together.

    ratelane merge OUT.0.jsonl OUT.1.jsonl ... -o OUTPUT [--errors ERRORS] [--input INPUT]

Each shard's ERRORS file (``OUT.i.errors.jsonl``, the name ``ratelane run``
gives it) is read too when it exists; files can also be listed explicitly.
Exit codes: 0 merged (and, with ``--input``, every request has a success);
1 merged, but ``--input`` has requests without a success; 2 usage errors,
nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ratelane._core.errors import ConfigurationError
from ratelane._files.merge import merge_outputs, missing_ids

from .main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .run import default_errors_path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "merge",
        help="combine the outputs of sharded runs, one line per custom_id",
        description=(
            "Combine the OUTPUT (and ERRORS) files of `ratelane run --shard I/N` runs: one "
            "line per custom_id, a success winning over an error, duplicates dropped. "
            "Streams: memory does not grow with the size of the responses."
        ),
    )
    add = parser.add_argument
    add("files", nargs="+", type=Path, metavar="OUT.jsonl", help="shard output files")
    add("-o", "--output", type=Path, required=True, help="the merged output to write")
    add(
        "--errors",
        type=Path,
        help="where the merged errors go (default: OUTPUT with .errors.jsonl)",
    )
    add(
        "--input",
        type=Path,
        help="the run's INPUT: report its custom_ids that have no success (exit 1 if any)",
    )
    parser.set_defaults(handler=run)
    return parser


def _with_shard_errors(files: list[Path]) -> list[Path]:
    """The files given, plus each one's default ERRORS file when it exists."""
    found = list(files)
    for path in files:
        errors = default_errors_path(path)
        if errors.is_file() and errors not in found and not path.name.endswith(".errors.jsonl"):
            found.append(errors)
    return found


def run(args: argparse.Namespace) -> int:
    output: Path = args.output
    errors: Path = args.errors or default_errors_path(output)
    files = _with_shard_errors(args.files)
    try:
        report = merge_outputs(files, output=output, errors=errors)
    except ConfigurationError as exc:
        print(f"ratelane merge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"merged {report.files} files: {report.successes:,} successes -> {output}, "
        f"{report.errors:,} errors -> {errors}; dropped {report.duplicates:,} duplicates, "
        f"{report.superseded:,} errors of requests that succeeded elsewhere"
        + (f", skipped {report.skipped:,} unreadable lines" if report.skipped else ""),
        file=sys.stderr,
    )
    if args.input is None:
        return EXIT_OK
    if not args.input.is_file():
        print(f"ratelane merge: {args.input}: no such file", file=sys.stderr)
        return EXIT_USAGE
    missing = missing_ids(args.input, output=output, errors=errors)
    if not missing.missing:
        print(f"all {missing.requests:,} requests of {args.input} have a success", file=sys.stderr)
        return EXIT_OK
    print(
        f"{missing.missing:,} of {missing.requests:,} requests of {args.input} have no success "
        f"({missing.failed:,} failed, {missing.unattempted:,} never attempted), e.g.:\n  "
        + "\n  ".join(missing.shown)
        + "\nHINT: run the shards that lack them again (a run resumes where it stopped), "
        "then merge again",
        file=sys.stderr,
    )
    return EXIT_FAILED
