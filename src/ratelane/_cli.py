"""The ``ratelane`` command: argument parsing and exit codes, nothing else.

Each subcommand lives in its own module and contributes ``add_parser`` and
``run``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from .testing import _command as fake_server_command

    parser = argparse.ArgumentParser(
        prog="ratelane",
        description="Run many OpenAI API requests as fast as the rate limits allow, resumably.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    fake_server_command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
