"""The governor's second backend: one budget shared through Redis by every process.

A :class:`SharedGovernor` is a :class:`~.governor.RateGovernor` (so the engine
calls ``admit``/``observe``/``cool_down`` exactly as it does on the local one)
whose admissions also draw from a :class:`~.redis_budget.RedisLimiter`:

* **admit**: first the local governor (the probe before the first answer, this
  process's cool-down gate, and the full limit as a local cap), then the shared
  budget in Redis, which paces all processes together.
* **observe**: limits learned from ``x-ratelimit-limit-*`` are pushed to Redis
  when they change (one call, not one per answer), so every process paces by them;
  admissions wait for that push, so the shared bucket never runs without a limit
  once one is known.
* **cool_down**: a 429 pauses this process at once and closes the shared
  budget for everyone (``RedisLimiter.cool_down``: emptied buckets, no burst after).
* **settle**: the token charge of an answered request is corrected from its
  reported usage (refund or charge). Corrections are summed locally and sent as
  one call every quarter second at most, so a busy process makes a few calls a
  second, not one per answer.
* **Redis lost** (any call raises :class:`~.redis_budget.RedisUnavailableError`):
  the process paces alone at ``1/N`` of the limit (``N`` = processes that
  registered recently, :class:`~.fallback.FallbackPolicy`), logs it, keeps every
  request and result, and probes Redis every ``probe_interval_s``; the first
  answer re-joins (limits pushed again first: a restarted Redis forgot them).
  The local bucket starts with half a second of the share, the re-joined shared
  one with half a second of the limit: never an unbounded burst.

A heartbeat (``register``) every second keeps ``N`` current and
notices a lost Redis even while nothing is admitted. Call :meth:`start` before
sending (an unreachable Redis is a :class:`ConfigurationError` then, nothing
sent) and :meth:`aclose` at the end; the Client does both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ratelane._core.errors import ConfigurationError
from ratelane._http.wire import RateLimitHeaders

from .fallback import FallbackPolicy
from .governor import RateGovernor
from .redis_budget import RedisLimiter, RedisUnavailableError

__all__ = ["SharedGovernor"]

logger = logging.getLogger("ratelane")

#: Usage corrections are summed locally and sent at most this often (seconds).
_CORRECT_EVERY_S = 0.25

#: Seconds between heartbeats (``register``) while Redis answers.
_HEARTBEAT_S = 1.0


class SharedGovernor(RateGovernor):
    """A :class:`RateGovernor` whose budget is shared through Redis (see the module).

    ``limiter`` is bound to this client's identity already (``RedisLimiter.bound``);
    ``rpm``/``tpm`` are the caller's ceilings, as for the local governor.
    """

    def __init__(
        self,
        limiter: RedisLimiter,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        fallback: FallbackPolicy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(rpm=rpm, tpm=tpm, clock=clock)
        self.limiter = limiter
        self._policy = fallback if fallback is not None else FallbackPolicy()
        #: The local governor pacing at 1/N while Redis is out of reach (None: shared).
        self._alone: RateGovernor | None = None
        self._pushed: tuple[float | None, float | None] = (None, None)
        self._learning: asyncio.Future[None] | None = None
        self._owed = 0
        self._correct_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat_handle: asyncio.TimerHandle | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._closed = False
        #: Times Redis was lost, and re-joined, during this governor's life.
        self.fallbacks = 0
        self.rejoins = 0

    # -- life -----------------------------------------------------------------
    async def start(self) -> None:
        """Register with Redis; :class:`ConfigurationError` when it does not answer."""
        try:
            await self.limiter.register()
        except RedisUnavailableError as error:
            raise ConfigurationError(
                f"the shared rate budget is out of reach: {error.args[0].split(' HINT')[0]} "
                "HINT: start Redis or fix --redis-url / RATELANE_REDIS_URL (or limiter=); "
                "nothing was sent"
            ) from None
        self._schedule_beat()

    async def flush(self) -> None:
        """Wait for the background calls (usage corrections, limits, a cool-down), each
        bounded by the limiter's ``timeout_s``."""
        if self._correct_handle is not None:
            self._correct_handle.cancel()
            self._correct_now()
        while pending := [task for task in self._tasks if task is not self._beat_task]:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Stop the heartbeat; let pending corrections reach Redis (so other processes
        get the refunds); unregister; close the connections."""
        self._closed = True
        if self._beat_handle is not None:
            self._beat_handle.cancel()
        await self.flush()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.limiter.aclose()

    @property
    def alone(self) -> bool:
        """True while Redis is out of reach and this process paces at its share."""
        return self._alone is not None

    # -- the governor's interface ----------------------------------------------
    def try_admit(self, tokens: int) -> float | None:
        """Never at once: admission asks Redis (or this process's share while alone)."""
        return None

    async def admit(self, tokens: int) -> float:
        alone = self._alone
        if alone is not None:
            return await alone.admit(tokens)
        await super().admit(tokens)
        try:
            learning = self._learning
            if learning is not None and not learning.done():
                await asyncio.shield(learning)
            await self.limiter.admit(1, tokens)
        except RedisUnavailableError as error:
            self._lose(error)
            alone = self._alone
            if alone is not None:  # always: _lose just made it
                return await alone.admit(tokens)
        return self._now()

    def observe(
        self,
        headers: RateLimitHeaders | None,
        *,
        typical_tokens: int = 0,
        sent_at: float | None = None,
    ) -> None:
        super().observe(headers, typical_tokens=typical_tokens, sent_at=sent_at)
        alone = self._alone
        if alone is not None:
            alone.observe(headers, typical_tokens=typical_tokens, sent_at=sent_at)
            return
        learned = (self.learned_rpm, self.learned_tpm)
        if learned != self._pushed and (learned[0] or learned[1]):
            self._pushed = learned
            self._learning = self._spawn(self.limiter.learn(*learned))

    def cool_down(self, seconds: float, *, sent_at: float | None = None) -> bool:
        started = super().cool_down(seconds, sent_at=sent_at)
        alone = self._alone
        if alone is not None:
            alone.cool_down(seconds, sent_at=sent_at)
        else:
            self._spawn(self._shared_cool_down(seconds))
        return started

    def settle(self, charged: int, used: int) -> None:
        """Correct a request's token charge from its reported usage (``used - charged``):
        summed locally and sent as one call at most every ``_CORRECT_EVERY_S``."""
        self._owed += used - charged
        if self._correct_handle is None and self._alone is None and self._owed:
            loop = asyncio.get_running_loop()
            self._correct_handle = loop.call_later(_CORRECT_EVERY_S, self._correct_now)

    def _correct_now(self) -> None:
        self._correct_handle = None
        owed, self._owed = self._owed, 0
        if owed and self._alone is None:
            self._spawn(self.limiter.correct_tokens(owed))

    @property
    def requests_per_minute(self) -> float | None:
        alone = self._alone
        return alone.requests_per_minute if alone is not None else super().requests_per_minute

    @property
    def cooling_down(self) -> bool:
        alone = self._alone
        return super().cooling_down or (alone is not None and alone.cooling_down)

    # -- background calls --------------------------------------------------------
    def _spawn(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, RedisUnavailableError):
            self._lose(error)
        elif error is not None:
            logger.error("shared rate budget: %s: %s", type(error).__name__, error)

    async def _shared_cool_down(self, seconds: float) -> None:
        await self.limiter.cool_down(seconds)

    # -- Redis lost and back -------------------------------------------------------
    def _limits(self) -> tuple[float | None, float | None]:
        """The shared limits per minute: what Redis last said, else what this process knows."""
        shared_rpm, shared_tpm = self.limiter.limits
        rpm = shared_rpm or _lower(self._rpm_ceiling, self.learned_rpm)
        tpm = shared_tpm or self.token_limit
        return rpm, tpm

    def _lose(self, error: RedisUnavailableError) -> None:
        if self._alone is not None or self._closed:
            return
        processes = self.limiter.processes
        rpm, tpm = self._limits()
        share = FallbackPolicy.local_limit
        self._alone = RateGovernor(
            rpm=share(rpm, processes), tpm=share(tpm, processes), clock=self._clock
        )
        self._owed = 0  # a restarted Redis starts a fresh budget: nothing to correct
        self.fallbacks += 1
        logger.warning(
            "%s Pacing alone at 1/%d of the limit (%s requests/min, %s tokens/min) "
            "until it answers; trying again every %gs.",
            error.args[0].split(" HINT")[0],
            processes,
            _show(share(rpm, processes)),
            _show(share(tpm, processes)),
            self._policy.probe_interval_s,
        )
        self._schedule_beat()

    def _schedule_beat(self) -> None:
        if self._closed:
            return
        if self._beat_handle is not None:
            self._beat_handle.cancel()
        # Every second (at most a third of the registration's life): processes that start
        # together learn of each other at once, so a fallback's share 1/N is right early.
        delay = (
            self._policy.probe_interval_s
            if self._alone is not None
            else min(_HEARTBEAT_S, self.limiter.process_ttl_s / 3)
        )
        loop = asyncio.get_running_loop()
        self._beat_handle = loop.call_later(delay, self._beat_now)

    def _beat_now(self) -> None:
        self._beat_handle = None
        if not self._closed:
            self._beat_task = self._spawn(self._beat())

    async def _beat(self) -> None:
        """Heartbeat; while alone, the probe that re-joins the shared budget."""
        try:
            if self._alone is not None:
                await self.limiter.reconnect()
            await self.limiter.register()
            if self._alone is not None:
                rpm, tpm = self._limits()
                await self.limiter.learn(rpm, tpm)  # a restarted Redis forgot them
                self._pushed = (rpm, tpm)
                self._alone = None
                self.rejoins += 1
                logger.warning(
                    "Redis at %s answers again: re-joined the shared rate budget "
                    "(%d processes share it).",
                    self.limiter.url,
                    self.limiter.processes,
                )
        except RedisUnavailableError as error:
            self._lose(error)
        finally:
            self._schedule_beat()

    def __repr__(self) -> str:
        state = "alone" if self._alone is not None else "shared"
        return f"<SharedGovernor {state} limiter={self.limiter!r} local={super().__repr__()}>"


def _lower(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)


def _show(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:.0f}"
