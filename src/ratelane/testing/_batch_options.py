"""Options of the fake Batch API: compressed time, limits, expiry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["BatchOptions"]

#: The real service's limits (protocol notes 6.2): lines per batch, bytes per input file.
MAX_LINES = 50_000
#: "200 MB"; decimal, the stricter reading, so a client that fits here fits there too.
MAX_BYTES = 200_000_000
#: Any uploaded file (protocol notes 6.3).
MAX_UPLOAD_BYTES = 512_000_000


def _check_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"BatchOptions.{name} must be a finite number of seconds >= 0")


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How the fake's batches behave.

    A batch spends ``validating_s`` in ``validating``, at least
    ``in_progress_s`` answering its lines (spread evenly, so
    ``request_counts`` moves), ``finalizing_s`` in ``finalizing``, and
    ``cancelling_s`` in ``cancelling`` after a cancel. ``time_scale``
    multiplies all four: ``time_scale=0.05`` runs the defaults in a tenth of
    a second. The real service takes minutes to hours.

    - ``expire_after_lines``: a batch answers this many lines, then expires;
      the rest become ``batch_expired`` error lines. ``POST
      /_fake/batches/{id}/expire`` forces the same on one batch.
    - ``enqueued_token_limit``: estimated input tokens allowed in unfinished
      batches of one model, as one number for every model or a
      ``{model: tokens}`` mapping (models not named are unlimited); a batch
      that would exceed it fails with ``token_limit_exceeded``.
    - ``max_lines``, ``max_bytes``: the per-batch limits checked while
      validating (50,000 lines, 200 MB); ``max_upload_bytes`` per upload.
    - ``shuffle``: write output lines in a seeded random order, as the real
      service does not keep input order.
    """

    validating_s: float = 1.0
    in_progress_s: float = 2.0
    finalizing_s: float = 0.5
    cancelling_s: float = 0.5
    time_scale: float = 1.0
    expire_after_lines: int | None = None
    enqueued_token_limit: int | Mapping[str, int] | None = None
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    shuffle: bool = True

    def __post_init__(self) -> None:
        for name in ("validating_s", "in_progress_s", "finalizing_s", "cancelling_s"):
            _check_seconds(name, getattr(self, name))
        _check_seconds("time_scale", self.time_scale)
        if self.expire_after_lines is not None and self.expire_after_lines < 0:
            raise ValueError("BatchOptions.expire_after_lines must be >= 0 or None")
        for name in ("max_lines", "max_bytes", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"BatchOptions.{name} must be >= 1")
        limit = self.enqueued_token_limit
        if isinstance(limit, Mapping):
            if any(not isinstance(v, int) or v < 1 for v in limit.values()):
                raise ValueError("BatchOptions.enqueued_token_limit values must be ints >= 1")
            object.__setattr__(self, "enqueued_token_limit", MappingProxyType(dict(limit)))
        elif limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(
                "BatchOptions.enqueued_token_limit must be an int >= 1, a {model: tokens} "
                f"mapping, or None, got {limit!r}"
            )

    def seconds(self, name: str) -> float:
        """One of the four phase durations, scaled by ``time_scale``."""
        value: float = getattr(self, name)
        return value * self.time_scale

    def token_limit(self, model: str) -> int | None:
        limit = self.enqueued_token_limit
        if isinstance(limit, Mapping):
            return limit.get(model)
        return limit
