"""Circuit breaker: pause the whole run while the service is down, instead of burning attempts.

States and transitions::

    CLOSED --(transient failures pass the threshold in the window)--> OPEN
    OPEN   --(pause ends)--> HALF_OPEN: exactly one caller is let through as the probe
    HALF_OPEN --(probe succeeds)--> CLOSED, everyone waiting proceeds
    HALF_OPEN --(probe fails)--> OPEN again, the pause doubled up to ``max_pause_s``

"Transient" means what an outage looks like: connection errors, timeouts,
resets and 5xx answers. 4xx answers (including 429, which the rate governor
handles) are not the service being down, so they neither open nor close it.

The threshold needs both a count and a share, so one slow shard of a healthy
service does not stop a busy run, and a quiet run with three 502s in a row
does not need fifty requests to notice::

    open when  failures >= min_failures  and  failures / outcomes >= failure_share
               (both counted over the last ``window_s`` seconds)

Outcomes are counted in ``BUCKETS`` slices of the window (a slice is
forgotten whole once it is older than the window), so a success costs a
clock read and two additions on the hot path, not an entry per request.

Waiting never polls: callers wait on one ``asyncio.Event`` that a single
``loop.call_at`` timer (or the probe's outcome) sets, so a virtual-time event
loop runs minutes of outage in milliseconds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ratelane._core.errors import ConfigurationError

__all__ = ["BUCKETS", "BreakerPolicy", "BreakerState", "CircuitBreaker"]

#: Slices of the window that outcomes are counted in.
BUCKETS = 16

logger = logging.getLogger("ratelane")


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """When the circuit opens and how long it stays open. Seconds throughout."""

    min_failures: int = 8
    failure_share: float = 0.5
    window_s: float = 10.0
    pause_s: float = 2.0
    max_pause_s: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_failures < 1:
            problems.append(f"min_failures must be at least 1, got {self.min_failures}")
        if not 0.0 < self.failure_share <= 1.0:
            problems.append(f"failure_share must be in (0, 1], got {self.failure_share}")
        if not self.window_s > 0:
            problems.append(f"window_s must be positive, got {self.window_s}")
        if not 0 < self.pause_s <= self.max_pause_s:
            problems.append(
                f"need 0 < pause_s <= max_pause_s, got pause_s={self.pause_s}, "
                f"max_pause_s={self.max_pause_s}"
            )
        if problems:
            raise ConfigurationError("invalid BreakerPolicy: " + "; ".join(problems))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """One breaker per client: every request of every run asks it before each attempt."""

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.state = BreakerState.CLOSED
        self.opened = 0  # how many times the circuit opened
        # [slice start, outcomes, failures] per slice of the window, oldest first.
        self._buckets: deque[list[float]] = deque()
        self._bucket_s = self.policy.window_s / BUCKETS
        self._bucket_end = -math.inf  # the newest slice takes outcomes until then
        self._count = 0
        self._failures = 0
        self._pause_s = self.policy.pause_s
        self._open_until = 0.0
        self._probing = False
        self._closed = asyncio.Event()
        self._closed.set()
        self._timer: asyncio.TimerHandle | None = None
        self._clock: Callable[[], float] | None = None

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.state.value} opened={self.opened} "
            f"failures_in_window={self._failures}/{self._count} pause={self._pause_s:g}s>"
        )

    def _now(self) -> float:
        clock = self._clock
        if clock is None:  # the loop's clock, looked up once: a breaker serves one loop
            clock = self._clock = asyncio.get_running_loop().time
        return clock()

    @property
    def open_for_s(self) -> float:
        """Seconds until the next probe may go (0 when closed or probing)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._now())

    async def admit(self) -> bool:
        """Wait until an attempt may be sent. Returns True when this caller is the probe.

        The probe must report its outcome with ``record`` (or ``abandon_probe``
        if it never sent), or everyone else keeps waiting.
        """
        while True:
            if self.state is BreakerState.CLOSED:
                return False
            if self.state is BreakerState.OPEN and not self._timer_pending():
                self.state = BreakerState.HALF_OPEN
            if self.state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                logger.info("circuit half-open: sending one probe request")
                return True
            await self._closed.wait()

    def abandon_probe(self) -> None:
        """The probe was never sent (the run stopped): let another caller probe."""
        if self._probing:
            self._probing = False
            self._wake()

    def record(self, *, failed: bool, probe: bool = False) -> None:
        """Report an attempt's outcome: ``failed`` means a transient failure (5xx, timeout...)."""
        now = self._now()
        if probe or self.state is BreakerState.HALF_OPEN:
            if probe:
                self._probing = False
            if failed:
                self._open(now, grow=True)
            else:
                self._close()
            return
        bucket = self._bucket(now)
        bucket[1] += 1
        self._count += 1
        if failed:
            bucket[2] += 1
            self._failures += 1
            if self.state is BreakerState.CLOSED and self._tripped():
                self._open(now, grow=False)

    def record_success(self, now: float | None = None) -> None:
        """``record(failed=False)`` for a success that is not the probe: the hot path.

        ``now``: the loop's time, when the caller has just read it."""
        if self.state is BreakerState.HALF_OPEN:
            self.record(failed=False)
            return
        if now is None:
            now = self._now()
        bucket = self._buckets[-1] if now < self._bucket_end else self._bucket(now)
        bucket[1] += 1
        self._count += 1

    def _bucket(self, now: float) -> list[float]:
        """The slice counting outcomes at ``now``; slices older than the window are dropped."""
        buckets = self._buckets
        if now < self._bucket_end:
            return buckets[-1]
        horizon = now - self.policy.window_s
        while buckets and buckets[0][0] < horizon:
            _, count, failures = buckets.popleft()
            self._count -= int(count)
            self._failures -= int(failures)
        bucket = [now, 0, 0]
        buckets.append(bucket)
        self._bucket_end = now + self._bucket_s
        return bucket

    def _tripped(self) -> bool:
        policy = self.policy
        return (
            self._failures >= policy.min_failures
            and self._failures >= policy.failure_share * self._count
        )

    def _open(self, now: float, *, grow: bool) -> None:
        if grow:
            self._pause_s = min(self.policy.max_pause_s, self._pause_s * 2)
        self.state = BreakerState.OPEN
        self.opened += 1
        self._closed.clear()
        self._open_until = now + self._pause_s
        self._buckets.clear()
        self._bucket_end = -math.inf
        self._count = 0
        self._failures = 0
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(self._open_until, self._wake)
        logger.warning(
            "circuit open: the service is failing (5xx, timeouts, resets); pausing every request "
            "for %.1f s, then sending one probe",
            self._pause_s,
        )

    def _close(self) -> None:
        if self.state is not BreakerState.CLOSED:
            logger.warning("circuit closed: the probe succeeded, resuming")
        self.state = BreakerState.CLOSED
        self._pause_s = self.policy.pause_s
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed.set()

    def _timer_pending(self) -> bool:
        return self._timer is not None and self._now() < self._open_until

    def _wake(self) -> None:
        # Wake the waiters so one of them can become the probe; the rest wait again.
        self._timer = None
        self._closed.set()
        self._closed = asyncio.Event() if self.state is not BreakerState.CLOSED else self._closed
