"""Client-side rate governance: two token buckets, tuned from headers, and one cool-down gate.

Rules taken from how OpenAI enforces limits (see the protocol notes):

* Bucket *capacity* is a fraction of a second's worth of the per-minute limit,
  refilled continuously, because the server enforces limits over short
  quanta: a bucket holding a minute's budget bursts straight into 429s.
* ``x-ratelimit-limit-*`` sizes the buckets; ``remaining``/``reset`` may only
  slow admission down, never grant extra burst.
* A 429 closes one gate for the whole run (not one sleep per request), cuts
  the rate multiplicatively, and the rate climbs back linearly afterwards.
* A server that announces no request limit gets its rate found from its 429s
  (:mod:`.discovery`: slow start, then AIMD).

The buckets are :class:`.bucket.Bucket` (FIFO, retunable while tasks wait).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from ratelane._http.wire import RateLimitHeaders

from .bucket import Bucket
from .discovery import Discovery, DiscoveryTuning

__all__ = ["RateGovernor"]

logger = logging.getLogger("ratelane")


#: After a 429 the rate drops to this fraction of the limit (never below the floor)...
_CUT_FACTOR = 0.8
_FLOOR_FACTOR = 0.5
#: ...and climbs back by this fraction of the limit per second.
_RECOVERY_PER_S = 0.05
#: 429s within this many seconds of a lowered limit, or of the last cut, cut nothing more.
_SETTLE_S = 3.0


class RateGovernor:
    """Decides when the next attempt may start.

    ``rpm``/``tpm`` are ceilings from the caller (``None``: learn from headers).
    Until the first answer arrives, only one attempt is admitted when any limit
    is still unknown, so a run never opens with a blind burst.
    ``headroom`` is the fraction of the learned limit to aim for, ``burst_s``
    how many seconds' worth of budget one bucket holds.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        headroom: float = 0.985,
        burst_s: float = 0.5,
        clock: Callable[[], float] | None = None,
        discovery: DiscoveryTuning | None = None,
    ) -> None:
        self._rpm_ceiling = rpm
        self._tpm_ceiling = tpm
        self._headroom = headroom
        self._burst_s = burst_s
        self._clock = clock
        self.learned_rpm: float | None = None
        self.learned_tpm: float | None = None
        self._requests: Bucket | None = None
        self._tokens: Bucket | None = None
        self._factor = 1.0
        self._factor_cut_at = -math.inf
        self._limit_lowered_at = -math.inf
        # Only for servers that announce no request limit: the rate found by 429s.
        self._discovery = Discovery(discovery)
        self._discovering = rpm is None
        self._last_sent_at: float | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._closed_until = 0.0
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._fill_on_reopen = False
        self._probe_sent = rpm is not None and tpm is not None
        self._first_answer = asyncio.Event()
        if self._probe_sent:
            self._first_answer.set()
        self.cooldowns = 0
        self._retune()

    # -- time ---------------------------------------------------------------
    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # -- admission ----------------------------------------------------------
    @property
    def requests_per_minute(self) -> float | None:
        """The request rate currently aimed for, per minute (``None``: unlimited)."""
        bucket = self._requests
        return None if bucket is None else bucket.rate_per_s * 60

    @property
    def token_limit(self) -> float | None:
        """Tokens per minute the account allows (learned or given), ``None`` if unknown."""
        return _effective(self._tpm_ceiling, self.learned_tpm)

    @property
    def tokens_per_minute(self) -> float | None:
        bucket = self._tokens
        return None if bucket is None else bucket.rate_per_s * 60

    @property
    def cooling_down(self) -> bool:
        return not self._gate.is_set()

    async def admit(self, tokens: int) -> float:
        """Wait until one more attempt charging ``tokens`` may start; return the time it did.

        Pass that time to :meth:`observe` with the answer, so stale headers can be told apart.
        """
        if not self._first_answer.is_set():
            if not self._probe_sent:
                self._probe_sent = True
            else:
                await self._first_answer.wait()
        while True:
            if not self._gate.is_set():
                await self._gate.wait()
            requests = self._requests
            if requests is not None and not requests.take(1):
                await requests.wait(1)
            bucket = self._tokens
            if bucket is not None and tokens > 0 and not bucket.take(tokens):
                await bucket.wait(tokens)
            # A cool-down that began while we queued applies to us too.
            if self._gate.is_set():
                if self._discovering:
                    # Only servers that announce no limit need the sending rate measured.
                    self._discovery.admitted += 1
                return self._now()

    def try_admit(self, tokens: int) -> float | None:
        """:meth:`admit` when the attempt may start at once: its time, with its share
        taken. ``None`` when it would have to wait (nothing taken): ``await admit``."""
        if not self._first_answer.is_set() or not self._gate.is_set():
            return None
        bucket = self._tokens if tokens > 0 else None
        if bucket is not None and not bucket.fits(tokens):
            return None
        requests = self._requests
        if requests is not None and not requests.take(1):
            return None
        if bucket is not None:
            bucket.take(tokens)
        if self._discovering:
            self._discovery.admitted += 1
        return self._now()

    def observe(
        self,
        headers: RateLimitHeaders | None,
        *,
        typical_tokens: int = 0,
        sent_at: float | None = None,
    ) -> None:
        """Learn from one answer's rate-limit headers (``None``: the answer had none).

        ``sent_at`` is what :meth:`admit` returned for that attempt. A higher
        limit is believed only from an attempt sent after the last lower one was
        seen: answers to requests admitted before a cut still carry the old,
        higher figure, and flipping back to it would burst into 429s.
        """
        self._first_answer.set()
        self._last_sent_at = sent_at
        # Retuning with nothing changed is a no-op, so only a new limit, a new
        # discovered pace or a rate still recovering from a cut (factor < 1) retunes.
        recovering = self._factor < 1.0
        if headers is None or headers.limit_requests is None:
            if self._discovering and self._discovery.answered(self._now(), sent_at):
                self._retune()
            if headers is None:
                if recovering:
                    self._retune()
                return
        stale = sent_at is not None and sent_at < self._limit_lowered_at
        rpm, tpm = self.learned_rpm, self.learned_tpm
        self.learned_rpm, lowered_rpm = _learn(rpm, headers.limit_requests, stale)
        self.learned_tpm, lowered_tpm = _learn(tpm, headers.limit_tokens, stale)
        if lowered_rpm or lowered_tpm:
            self._limit_lowered_at = self._now()
        self._discovering = self._rpm_ceiling is None and self.learned_rpm is None
        if recovering or self.learned_rpm != rpm or self.learned_tpm != tpm:
            self._retune()
        pause = 0.0
        if headers.remaining_requests is not None and headers.remaining_requests < 1:
            rpm = self.learned_rpm or 60.0
            pause = min(headers.reset_requests_s or math.inf, 60.0 / rpm)
        if (
            headers.remaining_tokens is not None
            and typical_tokens > 0
            and headers.remaining_tokens < typical_tokens
            and self.learned_tpm
        ):
            refill_s = (typical_tokens - headers.remaining_tokens) / (self.learned_tpm / 60.0)
            pause = max(pause, min(headers.reset_tokens_s or math.inf, refill_s))
        if pause > 0:
            self._close_gate(pause)

    def _discover_limit(self, now: float, sent_at: float | None) -> bool:
        """Tell discovery about a 429 when the server announces no request limit.

        Returns False when the server does announce a limit (nothing to discover)."""
        if not self._discovering:
            return False
        discovery = self._discovery
        first = discovery.rpm is None
        if discovery.rejected(now, sent_at) and first:
            logger.warning(
                "the server announces no request limit (no x-ratelimit-*-limit-requests or "
                "x-litellm-key-rpm-limit header) but answered 429: pacing at %.0f requests/min "
                "and raising it until the next 429. HINT: pass rpm= (--rpm) when you know the "
                "limit",
                discovery.rpm,
            )
        return True

    def cool_down(self, seconds: float, *, sent_at: float | None = None) -> bool:
        """Pause admission for everyone for ``seconds`` after a 429 and slow down.

        Called once per 429, after :meth:`observe` for the same answer;
        ``sent_at`` is what :meth:`admit` returned for the refused attempt
        (default: the ``sent_at`` given to that :meth:`observe`). Returns True
        when this starts a new cool-down (not an extension)."""
        started = self._gate.is_set()
        now = self._now()
        if sent_at is None:
            sent_at = self._last_sent_at
        discovering = self._discover_limit(now, sent_at)
        if started:
            self.cooldowns += 1
            # Cut the rate only for 429s that compliance did not prevent: not those
            # explained by a limit just lowered (the headers already retuned us), and
            # not again for stragglers admitted before the previous cut. Without an
            # announced limit the discovered rate already adapts, so no cut either.
            explained = discovering or now - self._limit_lowered_at < _SETTLE_S
            if not explained and now - self._factor_cut_at >= _SETTLE_S:
                self._factor = max(_FLOOR_FACTOR, self._current_factor(now) * _CUT_FACTOR)
                self._factor_cut_at = now
        self._fill_on_reopen = True
        self._close_gate(seconds)
        self._retune()
        if started:
            logger.warning(
                "rate limited (429): pausing all requests for %.2fs, then resuming at %s "
                "requests/min",
                seconds,
                _show(self.requests_per_minute),
            )
        return started

    def _close_gate(self, seconds: float) -> None:
        now = self._now()
        until = now + seconds
        if until <= self._closed_until and not self._gate.is_set():
            return
        self._closed_until = max(until, self._closed_until)
        self._gate.clear()
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
        loop = asyncio.get_running_loop()
        self._reopen_handle = loop.call_later(self._closed_until - now, self._reopen)

    def _reopen(self) -> None:
        self._reopen_handle = None
        if self._fill_on_reopen:
            # After a 429 the server's short-period bucket is empty: no burst.
            self._fill_on_reopen = False
            for bucket in (self._requests, self._tokens):
                if bucket is not None:
                    bucket.fill()
        self._gate.set()

    # -- remembered limits (issue 14) ----------------------------------------
    def assume_limits(self, *, rpm: float | None, tpm: float | None) -> bool:
        """Start from limits remembered from an earlier run, before any answer.

        Only fills limits not learned yet; the headers of the answers correct
        them either way (a higher announced limit is believed at once, a lower
        one slows admission down). When both limits are then known, no probe
        is needed: returns True, and admission fans out from the first request.
        """
        if self.learned_rpm is None and rpm:
            self.learned_rpm = rpm
        if self.learned_tpm is None and tpm:
            self.learned_tpm = tpm
        self._discovering = self._rpm_ceiling is None and self.learned_rpm is None
        self._retune()
        known = _effective(self._rpm_ceiling, self.learned_rpm) is not None and (
            _effective(self._tpm_ceiling, self.learned_tpm) is not None
        )
        if known:
            self._probe_sent = True
            self._first_answer.set()
        return known

    # -- tuning -------------------------------------------------------------
    def _current_factor(self, now: float) -> float:
        # Linear recovery: back to the full rate 4 s after a cut of 20%.
        recovered = self._factor + _RECOVERY_PER_S * max(0.0, now - self._factor_cut_at)
        return min(1.0, recovered)

    def _retune(self) -> None:
        factor = self._current_factor(self._now()) if self._factor < 1.0 else 1.0
        if factor >= 1.0:
            self._factor = 1.0
        request_limit = _effective(self._rpm_ceiling, self.learned_rpm or self._discovery.rpm)
        self._requests = self._tuned(self._requests, request_limit, factor, minimum=1.0)
        self._tokens = self._tuned(
            self._tokens, _effective(self._tpm_ceiling, self.learned_tpm), factor, minimum=1.0
        )

    def _tuned(
        self,
        bucket: Bucket | None,
        per_minute: float | None,
        factor: float,
        *,
        minimum: float,
    ) -> Bucket | None:
        if per_minute is None:
            return None
        rate_per_s = per_minute / 60.0 * self._headroom * factor
        capacity = max(minimum, rate_per_s * self._burst_s)
        if bucket is None:
            return Bucket(rate_per_s, capacity)
        if bucket.rate_per_s != rate_per_s or bucket.capacity != capacity:
            bucket.retune(rate_per_s, capacity)
        return bucket

    def __repr__(self) -> str:
        return (
            f"<RateGovernor rpm={_show(self.requests_per_minute)}"
            f" tpm={_show(self.tokens_per_minute)}"
            f" learned_rpm={_show(self.learned_rpm)} learned_tpm={_show(self.learned_tpm)}"
            f" cooling_down={self.cooling_down} cooldowns={self.cooldowns}"
            f"{f' discovery={self._discovery!r}' if self._discovering else ''}"
            f" requests={self._requests!r}>"
        )


def _show(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:.0f}"


def _learn(known: float | None, announced: float | None, stale: bool) -> tuple[float | None, bool]:
    """The limit to believe now, and whether it went down."""
    if not announced:
        return known, False
    if known is None:
        return announced, False
    if announced < known:
        return announced, True
    return (known if stale else announced), False


def _effective(ceiling: float | None, learned: float | None) -> float | None:
    if ceiling is None:
        return learned
    if learned is None:
        return ceiling
    return min(ceiling, learned)
