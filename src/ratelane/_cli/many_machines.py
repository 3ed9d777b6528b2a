"""``ratelane run``'s flags for many processes and machines (issue 13).

``--redis-url`` (or ``RATELANE_REDIS_URL``): one rate budget shared through Redis
by every process that uses the same key, organization, project and model.
``--shard I/N``: only the lines whose ``shard_of(custom_id, N) == I``.
"""

from __future__ import annotations

import argparse

from ratelane._core.errors import ConfigurationError
from ratelane._core.redis_url import safe_redis_url
from ratelane._files.shard import Shard

__all__ = ["add_many_machines_arguments", "many_machines_flags"]


def _shard(text: str) -> str:
    try:
        return str(Shard.parse(text))
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_many_machines_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "many processes and machines",
        "Share one rate budget across processes and hosts, and split INPUT between them; "
        "put the shard outputs together with `ratelane merge`.",
    )
    group.add_argument(
        "--redis-url",
        metavar="URL",
        default=None,
        help="redis://HOST:6379/0 holding the rate budget every process shares "
        "(default: $RATELANE_REDIS_URL; none: this process alone). Needs "
        "pip install 'ratelane[redis]'; Redis unreachable at start exits 2",
    )
    group.add_argument(
        "--shard",
        metavar="I/N",
        type=_shard,
        default=None,
        help="send only the lines whose custom_id hashes to shard I of N "
        "(0 <= I < N; the same split on every machine); give each shard its own OUTPUT",
    )


def many_machines_flags(args: argparse.Namespace) -> list[str]:
    """These flags as given, for the resume command (the Redis password masked)."""
    flags: list[str] = []
    if args.redis_url:
        flags += ["--redis-url", safe_redis_url(args.redis_url)]
    if args.shard:
        flags += ["--shard", args.shard]
    return flags
