"""The ``ratelane`` command: argument parsing and exit codes, nothing else.

Each subcommand lives in its own module and contributes ``add_parser`` and
``run``; this module only wires them together.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    from ratelane.testing import _command as fake_server_command

    from . import demo as demo_command
    from . import merge as merge_command
    from . import run as run_command

    parser = argparse.ArgumentParser(
        prog="ratelane",
        description="Run many OpenAI API requests as fast as the rate limits allow, resumably.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    run_command.add_parser(subparsers)
    demo_command.add_parser(subparsers)
    fake_server_command.add_parser(subparsers)
    merge_command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
