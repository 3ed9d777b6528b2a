"""The ``ratelane`` command: argument parsing and exit codes, nothing else.

Each subcommand lives in its own module and contributes ``add_parser`` and
``run``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Every line succeeded.
EXIT_OK = 0
#: The run finished, but some lines failed permanently.
EXIT_FAILED = 1
#: Invalid input or usage (or OUTPUT locked, or no API key): nothing was sent.
EXIT_USAGE = 2
#: Stopped early on a fatal error (invalid key, quota, error streak); resumable.
EXIT_FATAL = 3
#: Interrupted by SIGINT/SIGTERM and stopped cleanly; resumable.
EXIT_INTERRUPTED = 130


#: Every subcommand: (name, the module that defines it, its one-line help). A
#: module is imported only when its subcommand runs (or for its own --help), so
#: ``ratelane run`` never loads the fake server that ``demo`` and ``fake-server`` use.
SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "ratelane._cli.run", "send every request of a Batch-format JSONL file, resumably"),
    ("demo", "ratelane._cli.demo", "try ratelane offline: a sample run against the fake server"),
    (
        "fake-server",
        "ratelane.testing._command",
        "run a fake OpenAI API server (for tests and benchmarks)",
    ),
    ("merge", "ratelane._cli.merge", "combine the outputs of sharded runs, one line per custom_id"),
    ("batch", "ratelane._cli.batch", "status or cancel of the batches of a `run --via batch`"),
)


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the chosen subcommand in full, the others as stubs for --help."""
    chosen = _chosen(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="ratelane",
        description="Run many OpenAI API requests as fast as the rate limits allow, resumably.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, module, summary in SUBCOMMANDS:
        if name == chosen:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
