"""A fake OpenAI API server for tests and benchmarks: real wire shapes, limits and faults.

Three ways to run it:

- ``async with FakeOpenAI(rpm=600, tpm=200_000) as server:`` inside a running loop
  (by default each model has its published tier-5 limits; ``rpm=None, tpm=None``
  is an unlimited server);
- ``with FakeOpenAI().run_in_thread() as server:`` from synchronous code, or
  ``server = FakeOpenAI().start_in_thread()`` ... ``server.stop()`` in a notebook;
- ``ratelane fake-server --port 0 ...`` as a separate process; it prints one
  JSON line (``base_url``, ``api_key``, ...) and serves until SIGINT/SIGTERM.
  Admin endpoints ``POST /_fake/limits``, ``GET /_fake/ledger`` and
  ``POST /_fake/reset`` control it from outside.

The pytest fixture: write ``from ratelane.testing import fake_openai`` in a
``conftest.py``. It is loaded lazily, so importing ``ratelane.testing``
does not import pytest (a test-only dependency) unless the fixture is asked for.

The Batch API (``/v1/files``, ``/v1/batches``) runs batches in compressed
time with the same answers as the real-time endpoints; :class:`BatchOptions`
sets its durations, expiry and enqueued-token limits, and
``server.batches`` records every upload and batch creation.

One request header forces a fault deterministically: ``x-fake-fault:`` one of
``quota``, ``500``, ``502``, ``503``, ``reset``, ``stall``, ``truncated``.
On ``stream: true`` requests ``x-fake-stream-fault:`` ``cut``, ``error`` or
``failed`` breaks the stream; ``[fake:failed]`` / ``[fake:incomplete]`` in the
input text make a background or streamed response end that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._app import FAULT_HEADER
from ._batch_options import BatchOptions
from ._bodies import ECHO_PREFIX, REASONING_TOKENS
from ._config import FAULT_KINDS, TIER_5, TIER_5_LIMITS, Faults, Latency
from ._ledger import Ledger, LedgerEntry
from ._modes import (
    FAILED_MARKER,
    INCOMPLETE_MARKER,
    STREAM_FAULT_HEADER,
    STREAM_FAULT_KINDS,
    Background,
    Streaming,
)
from ._server import KEEP, FakeOpenAI

if TYPE_CHECKING:
    from ._fixture import fake_openai

__all__ = [
    "ECHO_PREFIX",
    "FAILED_MARKER",
    "FAULT_HEADER",
    "FAULT_KINDS",
    "INCOMPLETE_MARKER",
    "KEEP",
    "REASONING_TOKENS",
    "STREAM_FAULT_HEADER",
    "STREAM_FAULT_KINDS",
    "TIER_5",
    "TIER_5_LIMITS",
    "Background",
    "BatchOptions",
    "FakeOpenAI",
    "Faults",
    "Latency",
    "Ledger",
    "LedgerEntry",
    "Streaming",
    "fake_openai",
]


def __getattr__(name: str) -> Any:
    # The fixture imports pytest; only load it when someone asks for it.
    if name == "fake_openai":
        from ._fixture import fake_openai

        return fake_openai
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
