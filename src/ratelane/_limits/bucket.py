"""A leaky bucket whose rate and capacity can change while tasks wait on it.

The bucket holds a *level* that drains continuously at ``rate_per_s`` and may
never exceed ``capacity``. Taking ``amount`` adds it to the level.

* **Waiting without polling.** Waiters queue in a FIFO deque of futures; one
  ``loop.call_at`` timer wakes the head exactly when enough has drained (the
  idea of aiolimiter's leaky bucket, which ranks waiters by amount instead).
* **FIFO.** Nobody passes a waiter: a small amount arriving behind a large one
  waits its turn, so a big token charge is never starved by small ones.
* **Amounts larger than the capacity** are poured in as room appears, so a
  3000-token charge through a 500-token bucket refilling 1000/s passes after
  2.5 s and nothing else slips in meanwhile.
* **Retuning** while tasks wait keeps the fill *fraction* (a full bucket that
  grows stays full: no burst) and re-arms the timer at the new rate.

The hot path is :meth:`take`: synchronous, no future, no coroutine; only when
it fails does the caller ``await`` :meth:`wait`.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Bucket"]

# Float drift is forgiven: a level within this much of the room counts as fitting.
_EPSILON = 1e-9


class _Waiter:
    __slots__ = ("amount", "future")

    def __init__(self, amount: float, future: asyncio.Future[None]) -> None:
        self.amount = amount  # still to pour in
        self.future = future  # resolved once all of it is in


class Bucket:
    """A FIFO leaky bucket: ``take`` now or ``await wait`` for room."""

    __slots__ = ("_capacity", "_handle", "_last", "_level", "_loop", "_rate", "_waiters")

    def __init__(self, rate_per_s: float, capacity: float) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError(
                f"a bucket needs a positive rate and capacity, got {rate_per_s!r} and {capacity!r}"
            )
        self._rate = rate_per_s
        self._capacity = capacity
        self._level = 0.0
        self._last = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._waiters: deque[_Waiter] = deque()

    # -- state ----------------------------------------------------------------
    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def level(self) -> float:
        """How full the bucket is now (``0`` empty, ``capacity`` full)."""
        self._drain(self._bound().time())
        return self._level

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.future.done())

    def _bound(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            # Bound lazily: the governor builds buckets before its loop runs.
            loop = self._loop = asyncio.get_running_loop()
            self._last = loop.time()
        return loop

    def _drain(self, now: float) -> None:
        if self._level > 0.0:
            self._level = max(0.0, self._level - (now - self._last) * self._rate)
        self._last = now

    # -- taking ---------------------------------------------------------------
    def fits(self, amount: float) -> bool:
        """Whether :meth:`take` of ``amount`` would succeed now (nothing is taken)."""
        if self._waiters:
            return False
        self._drain(self._bound().time())
        return self._level + amount <= self._capacity + _EPSILON

    def take(self, amount: float) -> bool:
        """Add ``amount`` now if it fits and nobody waits; False means: ``await wait(amount)``."""
        if self._waiters:
            return False
        self._drain(self._bound().time())
        if self._level + amount > self._capacity + _EPSILON:
            return False
        self._level += amount
        return True

    async def wait(self, amount: float) -> None:
        """Queue behind earlier waiters until ``amount`` (any size) has been poured in."""
        loop = self._bound()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(_Waiter(float(amount), future))
        if len(self._waiters) == 1:
            self._wake()
        try:
            await future
        except asyncio.CancelledError:
            # A cancelled head must not hold the others back until its timer.
            if self._waiters and self._waiters[0].future is future:
                self._waiters.popleft()
                self._wake()
            raise

    def _wake(self) -> None:
        """Pour into the head waiters what fits now; arm one timer for the rest."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        loop = self._bound()
        now = loop.time()
        self._drain(now)
        waiters = self._waiters
        capacity = self._capacity
        while waiters:
            head = waiters[0]
            future = head.future
            if future.done():  # cancelled while queued
                waiters.popleft()
                continue
            amount = head.amount
            room = capacity - self._level
            if amount <= room + _EPSILON:
                self._level = min(capacity, self._level + amount)
                waiters.popleft()
                future.set_result(None)
                continue
            if room > 0.0:
                # Pour what fits: an amount beyond the capacity passes in parts.
                self._level = capacity
                amount -= room
                head.amount = amount
            # Wake when the level has drained enough for the rest (or all of it).
            deficit = min(amount, capacity) - (capacity - self._level)
            self._handle = loop.call_at(now + deficit / self._rate, self._wake)
            return

    # -- tuning ---------------------------------------------------------------
    def retune(self, rate_per_s: float, capacity: float) -> None:
        """Change rate and capacity now, keeping the fill fraction; waiters re-time."""
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError(
                f"a bucket needs a positive rate and capacity, got {rate_per_s!r} and {capacity!r}"
            )
        if self._loop is not None:
            self._drain(self._loop.time())
        # Keep the fill fraction: a bucket that grows must not turn into a burst.
        self._level = self._level * capacity / self._capacity
        self._rate = rate_per_s
        self._capacity = capacity
        if self._waiters:
            self._wake()

    def fill(self) -> None:
        """Mark the bucket full, so nothing bursts through (after a cool-down)."""
        if self._loop is not None:
            self._drain(self._loop.time())
        self._level = self._capacity
        if self._waiters:
            self._wake()

    def __repr__(self) -> str:
        level = self._level
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The level now, without draining (a repr changes nothing).
            level = max(0.0, level - (loop.time() - self._last) * self._rate)
        state = f"level={level:.3f}/{self._capacity:g} waiters={self.waiting}"
        handle = self._handle
        if handle is not None and not handle.cancelled() and loop is not None:
            state += f" waking_in={max(0.0, handle.when() - loop.time()):.3f}s"
        return f"<Bucket rate={self._rate:g}/s {state}>"
