"""Batch API mode's knobs, and its one timing policy: how long to wait between polls.

``BatchRunOptions`` is what ``run_file(..., via="batch", batch=...)`` and the
``ratelane run --via batch`` flags set. The defaults are the service's own
limits (protocol notes 6.2): 50,000 lines and 200 MB per uploaded file.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from ratelane._core.errors import ConfigurationError

__all__ = [
    "COMPLETION_WINDOWS",
    "DEFAULT_POLL_INTERVAL_S",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_LINES",
    "POLL_BACKOFF_FACTOR",
    "BatchRunOptions",
    "poll_delay",
]

#: The service's limits per batch (protocol notes 6.2); "200 MB" read as decimal, the stricter.
MAX_BATCH_LINES = 50_000
MAX_BATCH_BYTES = 200_000_000
#: The only window the service offers today.
COMPLETION_WINDOWS = ("24h",)
#: Seconds between polls while the batches move (the real service takes minutes to hours).
DEFAULT_POLL_INTERVAL_S = 15.0
#: While nothing changes, the wait grows up to this many times ``poll_interval_s``
#: (capped at ``MAX_POLL_WAIT_S``): a batch validating for an hour costs a few polls, not 240.
POLL_BACKOFF_FACTOR = 16
MAX_POLL_WAIT_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRunOptions:
    """How a file run uses the Batch API (``via="batch"``).

    - ``completion_window``: the batches' window (the service accepts ``"24h"`` only).
    - ``detach``: upload every chunk, create every batch, record them in
      ``<OUTPUT>.batches.json`` and return at once (``ExitReason.DETACHED``);
      the same call later collects the results.
    - ``poll_interval_s``: the shortest wait between two polls (see :func:`poll_delay`).
    - ``max_batch_lines`` / ``max_batch_bytes``: the caps of one uploaded file
      (at most the service's 50,000 lines and 200 MB).
    - ``max_enqueued_tokens``: keep the estimated input tokens of this run's
      unfinished batches of one model under this (the organization's
      enqueued-token pool); a chunk is also cut at this size. ``None``: no cap
      (a batch refused with ``token_limit_exceeded`` is created again after an
      earlier one finishes).
    - ``fallback``: ``"realtime"`` sends the lines an expired or cancelled
      batch did not answer through the real-time engine at once, instead of
      in a new batch.
    """

    completion_window: str = "24h"
    detach: bool = False
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    max_batch_lines: int = MAX_BATCH_LINES
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_enqueued_tokens: int | None = None
    fallback: Literal["batch", "realtime"] = "batch"

    def __post_init__(self) -> None:
        if self.completion_window not in COMPLETION_WINDOWS:
            raise ConfigurationError(
                f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}, "
                f"got {self.completion_window!r}. HINT: the Batch API offers 24h only"
            )
        interval = self.poll_interval_s
        if isinstance(interval, bool) or not (math.isfinite(interval) and interval > 0):
            raise ConfigurationError(
                f"poll_interval_s must be a positive number of seconds, got {interval!r}"
            )
        for name, cap in (
            ("max_batch_lines", MAX_BATCH_LINES),
            ("max_batch_bytes", MAX_BATCH_BYTES),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
                raise ConfigurationError(
                    f"{name} must be a whole number from 1 to {cap:,} (the Batch API's limit), "
                    f"got {value!r}"
                )
        tokens = self.max_enqueued_tokens
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
        ):
            raise ConfigurationError(
                f"max_enqueued_tokens must be a positive whole number or None, got {tokens!r}"
            )
        if self.fallback not in ("batch", "realtime"):
            raise ConfigurationError(
                f'fallback must be "batch" or "realtime", got {self.fallback!r}'
            )

    @property
    def max_poll_wait_s(self) -> float:
        """The longest wait between two polls."""
        return max(
            self.poll_interval_s, min(MAX_POLL_WAIT_S, self.poll_interval_s * POLL_BACKOFF_FACTOR)
        )


def poll_delay(
    quiet_polls: int, *, floor_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before the next poll, after ``quiet_polls`` polls that saw no change.

    ``base = min(cap_s, floor_s * 2 ** quiet_polls)``, then jittered down by up
    to a quarter and never under ``floor_s``::

        delay = max(floor_s, base * uniform(0.75, 1.0))

    So polls run every ``floor_s`` while counts move, back off exponentially
    to ``cap_s`` while nothing changes, and many runs started together spread out.
    """
    if quiet_polls < 0:
        raise ValueError(f"quiet_polls must be >= 0, got {quiet_polls}")
    base = min(cap_s, floor_s * 2.0 ** min(quiet_polls, 62))
    draw = (rng or random).uniform(0.75, 1.0)
    return max(floor_s, base * draw)
