"""``ratelane fake-server``: run the fake OpenAI server in the foreground.

On start it prints exactly one JSON line to stdout (``base_url``, ``api_key``,
``host``, ``port``, ``admin_url``, ``pid``) and flushes, so a parent process
can find the port of ``--port 0``. It then serves until SIGINT or SIGTERM
and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import orjson

from ratelane._core.argtypes import non_negative_float, positive_float, probability

from ._batch_options import BatchOptions
from ._config import TIER_5, Faults, Latency, Limit
from ._modes import Background, Streaming
from ._server import FakeOpenAI

__all__ = ["add_parser", "run"]


def limit(text: str) -> Limit:
    """A ``--rpm`` / ``--tpm`` value: a number, ``unlimited`` (or ``none``), or ``tier-5``."""
    word = text.strip().lower()
    if word in ("unlimited", "none"):
        return None
    if word == TIER_5.value:
        return TIER_5
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number > 0, 'unlimited' or 'tier-5', got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fake-server",
        help="run a fake OpenAI API server (for tests and benchmarks)",
        description=(
            "Serve an imitation of the OpenAI API (Responses, Chat Completions, Embeddings) "
            "with real rate-limit headers, 429s and injectable faults. Prints one JSON line "
            "with base_url and api_key, then serves until SIGINT/SIGTERM."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port, 0 for any free one (default 8000)")
    add("--api-key", default="sk-fake", help="the accepted API key (default sk-fake)")
    add("--rpm", type=limit, default=TIER_5,
        help="requests per minute for all models, 'unlimited', or 'tier-5' (default: "
        "each model's published tier-5 limit)")  # fmt: skip
    add("--tpm", type=limit, default=TIER_5,
        help="tokens per minute, as --rpm (default tier-5)")  # fmt: skip
    add("--unlimited", action="store_true",
        help="no limits, no rate-limit headers (--rpm unlimited --tpm unlimited)")  # fmt: skip
    add("--quantum-s", type=positive_float, default=1.0, help="enforcement period (default 1.0 s)")
    add("--latency", type=non_negative_float, default=0.0, help="seconds per answer (median)")
    add("--latency-sigma", type=non_negative_float, default=0.0, help="lognormal sigma (default 0)")
    add(
        "--latency-per-token", type=non_negative_float, default=0.0, help="seconds per output token"
    )
    add("--fail-rate", type=probability, default=0.0, help="probability of HTTP 500")
    add("--fail-502-rate", type=probability, default=0.0, help="probability of HTTP 502")
    add("--fail-503-rate", type=probability, default=0.0, help="probability of HTTP 503")
    add("--reset-rate", type=probability, default=0.0, help="probability of a connection reset")
    add("--stall-rate", type=probability, default=0.0, help="probability of a stall")
    add("--stall-s", type=non_negative_float, default=30.0, help="stall duration (default 30 s)")
    add("--stall-then", choices=("answer", "drop"), default="drop", help="after a stall")
    add("--truncate-rate", type=probability, default=0.0, help="probability of cut JSON")
    add("--quota-rate", type=probability, default=0.0, help="probability of insufficient_quota")
    add("--reject-reasoning", action="append", default=[], metavar="MODEL",
        help="model that refuses 'reasoning' (repeatable)")  # fmt: skip
    add("--reject-temperature", action="append", default=[], metavar="MODEL",
        help="model that refuses 'temperature' (repeatable)")  # fmt: skip
    add("--store-limit", type=int, default=10_000, help="stored responses kept (default 10000)")
    add("--ledger-limit", type=int, default=10_000,
        help="ledger entries kept; counters always (default 10000)")  # fmt: skip
    add("--seed", type=int, default=0, help="seed for faults, latency and ids (default 0)")
    add("--no-rate-limit-headers", dest="rate_limit_headers", action="store_false",
        help="enforce limits, send no x-ratelimit-* headers (as many servers do)")  # fmt: skip
    # -- Batch API --
    add("--batch-time-scale", type=non_negative_float, default=1.0, metavar="FACTOR",
        help="scale batch phase durations (default 1: 1 s, 2 s, 0.5 s)")  # fmt: skip
    add("--batch-expire-after", type=int, default=None, metavar="LINES",
        help="every batch expires after answering this many lines")  # fmt: skip
    add("--batch-token-limit", type=int, default=None, metavar="TOKENS",
        help="enqueued-token pool per model (default unlimited)")  # fmt: skip
    gateway = parser.add_argument_group("gateway dialects (LiteLLM and other proxies)")
    gateway.add_argument("--limit-dialect", choices=("openai", "litellm-key"), default="openai",
        help="rate-limit header names: OpenAI's or LiteLLM's per-key ones")  # fmt: skip
    gateway.add_argument("--window", choices=("bucket", "fixed-minute"), default="bucket",
        help="continuous refill, or a count per calendar minute (LiteLLM)")  # fmt: skip
    gateway.add_argument("--window-offset-s", type=non_negative_float, default=None,
        help="seconds into its first minute at start (default: the clock's)")  # fmt: skip
    gateway.add_argument("--first-window-used", action="store_true",
        help="start with the first minute's budget used up (only 429s until it turns)")  # fmt: skip
    gateway.add_argument("--error-body", choices=("json", "text"), default="json",
        help="error bodies as OpenAI's JSON or plain text (default json)")  # fmt: skip
    gateway.add_argument("--unsupported-params", choices=("openai", "litellm"), default="openai",
        help="wording of a rejected parameter's 400 (default openai)")  # fmt: skip
    gateway.add_argument("--request-id-header", default="x-request-id",
        help="header carrying the request id, e.g. x-litellm-call-id")  # fmt: skip
    # Long-running answers: background lifecycle and streams (see _modes).
    add("--background-queued-s", type=non_negative_float, default=0.05,
        help="seconds a background response stays queued (default 0.05)")  # fmt: skip
    add("--background-s", type=non_negative_float, default=0.2,
        help="seconds a background response stays in_progress (default 0.2)")  # fmt: skip
    add("--background-fail-rate", type=probability, default=0.0,
        help="probability a background response ends failed")  # fmt: skip
    add("--background-incomplete-rate", type=probability, default=0.0,
        help="probability a background response ends incomplete")  # fmt: skip
    add("--first-token-s", type=non_negative_float, default=None,
        help="seconds to the first streamed delta (default: --latency)")  # fmt: skip
    add("--stream-cut-rate", type=probability, default=0.0,
        help="probability a stream is cut mid-way")  # fmt: skip
    add("--stream-error-rate", type=probability, default=0.0,
        help="probability a stream ends with an error event")  # fmt: skip
    add("--stream-failed-rate", type=probability, default=0.0,
        help="probability a stream ends with response.failed")  # fmt: skip
    parser.set_defaults(handler=run)
    return parser


def _server_from_args(args: argparse.Namespace) -> FakeOpenAI:
    faults = Faults(
        quota=args.quota_rate,
        error_500=args.fail_rate,
        error_502=args.fail_502_rate,
        error_503=args.fail_503_rate,
        reset=args.reset_rate,
        stall=args.stall_rate,
        truncated=args.truncate_rate,
        stall_s=args.stall_s,
        stall_then=args.stall_then,
        reject_reasoning_models=frozenset(args.reject_reasoning),
        reject_temperature_models=frozenset(args.reject_temperature),
    )
    return FakeOpenAI(
        api_key=args.api_key,
        rpm=None if args.unlimited else args.rpm,
        tpm=None if args.unlimited else args.tpm,
        quantum_s=args.quantum_s,
        latency=Latency(
            args.latency, sigma=args.latency_sigma, per_output_token_s=args.latency_per_token
        ),
        faults=faults,
        seed=args.seed,
        host=args.host,
        port=args.port,
        store_limit=args.store_limit,
        rate_limit_headers=args.rate_limit_headers,
        ledger_limit=args.ledger_limit,
        batches=BatchOptions(
            time_scale=args.batch_time_scale,
            expire_after_lines=args.batch_expire_after,
            enqueued_token_limit=args.batch_token_limit,
        ),
        limit_dialect=args.limit_dialect,
        window=args.window,
        window_offset_s=args.window_offset_s,
        first_window_used=args.first_window_used,
        error_body=args.error_body,
        unsupported_params=args.unsupported_params,
        request_id_header=args.request_id_header,
        background=Background(
            queued_s=args.background_queued_s,
            in_progress_s=args.background_s,
            failed=args.background_fail_rate,
            incomplete=args.background_incomplete_rate,
        ),
        streaming=Streaming(
            first_token_s=args.first_token_s,
            cut=args.stream_cut_rate,
            error=args.stream_error_rate,
            failed=args.stream_failed_rate,
        ),
    )


async def _serve(server: FakeOpenAI) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt instead
            loop.add_signal_handler(signum, stop.set)
    async with server:
        line = {
            "base_url": server.base_url,
            "api_key": server.api_key,
            "host": server.options.host,
            "port": server.port,
            "admin_url": f"{server.url}/_fake",
            "pid": os.getpid(),
        }
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        server = _server_from_args(args)
    except (TypeError, ValueError) as exc:
        print(f"ratelane fake-server: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(server))
    return 0
