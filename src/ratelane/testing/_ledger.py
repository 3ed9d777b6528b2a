"""What the fake server saw and answered, for tests to assert on.

Counters cover every request for the server's lifetime (or since
:meth:`Ledger.clear`); individual entries are kept up to ``limit`` (the most
recent ones), so a million-request benchmark costs counters, not a million
objects. The per-slot admission counts behind :meth:`Ledger.rate_series`
cost one dict entry per 10 ms of activity. Thread-safe: the server appends on
its loop while a test reads from another thread.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Ledger", "LedgerEntry"]

#: Resolution of the admission series; ``rate_series`` buckets are multiples of it.
SLOT_S = 0.01


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One request as the server handled it.

    ``time_s`` is the server clock (the injected one, if any) when the answer
    was decided, before any latency or stall. ``status`` is the HTTP status
    sent, or 0 when the server deliberately sent nothing (``reset``, or a
    ``stall`` that drops). ``tokens`` is the admission charge
    (``estimate_request_tokens``), 0 for requests not admitted.
    ``retry_count`` is the ``x-stainless-retry-count`` header as an integer.
    ``error_code`` is ``error.code`` of an error answer (``"rate_limit_exceeded"``,
    ``"insufficient_quota"``, ...). ``custom_id`` comes from
    ``body["metadata"]["custom_id"]``; ``body_digest`` is blake2b-128 of the
    raw body bytes, hex.
    """

    time_s: float
    method: str
    path: str
    status: int
    request_id: str = ""
    model: str | None = None
    custom_id: str | None = None
    body_digest: str = ""
    fault: str | None = None
    tokens: int = 0
    retry_count: int | None = None
    error_code: str | None = None

    @property
    def admitted(self) -> bool:
        """Not refused with a 429 (whatever happened afterwards)."""
        return self.status != 429


class Ledger:
    """Every request received; see the module docstring for what is bounded."""

    def __init__(self, *, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: deque[LedgerEntry] = deque(maxlen=limit)
        self._by_status: Counter[int] = Counter()
        self._by_path: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._by_code: Counter[str] = Counter()
        self._slots: Counter[int] = Counter()
        self._total = 0
        self._retried = 0
        self._tokens = 0
        self._origin: float | None = None
        self._last: float | None = None

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"Ledger(total={self._total}, by_status={dict(self._by_status)}, "
                f"kept={len(self._entries)}, limit={self._limit})"
            )

    def record(self, entry: LedgerEntry) -> None:
        with self._lock:
            if self._origin is None:
                self._origin = entry.time_s
            self._last = entry.time_s
            self._total += 1
            self._by_status[entry.status] += 1
            self._by_path[entry.path] += 1
            if entry.fault is not None:
                self._by_fault[entry.fault] += 1
            if entry.error_code is not None:
                self._by_code[entry.error_code] += 1
            if entry.retry_count:
                self._retried += 1
            self._tokens += entry.tokens
            if entry.status != 429:
                self._slots[math.floor((entry.time_s - self._origin) / SLOT_S)] += 1
            if self._limit != 0:
                self._entries.append(entry)

    def clear(self) -> None:
        """Forget everything (the limit stays)."""
        with self._lock:
            self._entries.clear()
            for counter in (self._by_status, self._by_path, self._by_fault, self._by_code):
                counter.clear()
            self._slots.clear()
            self._total = self._retried = self._tokens = 0
            self._origin = self._last = None

    @property
    def entries(self) -> list[LedgerEntry]:
        """A copy of the kept entries, oldest first."""
        with self._lock:
            return list(self._entries)

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    @property
    def dropped(self) -> int:
        """Entries counted but not kept because of ``limit``."""
        with self._lock:
            return self._total - len(self._entries)

    @property
    def by_status(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_status)

    @property
    def by_path(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_path)

    @property
    def by_fault(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_fault)

    @property
    def by_error_code(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_code)

    @property
    def rate_limited(self) -> int:
        """Requests answered 429, for any reason (rate, too large, quota)."""
        with self._lock:
            return self._by_status[429]

    @property
    def retried(self) -> int:
        """Requests whose ``x-stainless-retry-count`` was above 0."""
        with self._lock:
            return self._retried

    @property
    def tokens_charged(self) -> int:
        with self._lock:
            return self._tokens

    def rate_series(self, bucket_s: float = 1.0) -> list[int]:
        """Admitted (non-429) requests per ``bucket_s`` window, from the first request.

        Windows without traffic count 0. ``bucket_s`` must be a multiple of 10 ms.
        """
        slots_per_bucket = round(bucket_s / SLOT_S)
        if slots_per_bucket < 1 or not math.isclose(
            slots_per_bucket * SLOT_S, bucket_s, rel_tol=1e-6
        ):
            raise ValueError(f"bucket_s must be a positive multiple of {SLOT_S}, got {bucket_s}")
        with self._lock:
            slots = dict(self._slots)
        if not slots:
            return []
        series = [0] * (max(slots) // slots_per_bucket + 1)
        for slot, count in slots.items():
            series[slot // slots_per_bucket] += count
        return series

    def summary(self, bucket_s: float = 1.0) -> dict[str, Any]:
        """A JSON-ready digest, as served by ``GET /_fake/ledger``."""
        series = self.rate_series(bucket_s)
        with self._lock:
            return {
                "total": self._total,
                "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
                "rate_limited": self._by_status[429],
                "by_error_code": dict(self._by_code),
                "by_fault": dict(self._by_fault),
                "by_path": dict(self._by_path),
                "retried": self._retried,
                "tokens_charged": self._tokens,
                "first_s": self._origin,
                "last_s": self._last,
                "kept_entries": len(self._entries),
                "bucket_s": bucket_s,
                "rate_series": series,
            }
