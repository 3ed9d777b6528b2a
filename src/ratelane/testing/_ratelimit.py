"""Server-side rate limits: quantised admission plus the per-minute view in the headers.

Each limited dimension (requests, tokens) keeps a *debt*: how much was spent
and not yet refilled. Debt decays continuously at ``limit / 60`` per second.
Two capacities sit on that one debt:

- **admission** (the quantum): a request costing ``c`` is admitted when
  ``debt + c <= max(burst, c)``, with ``burst = limit * quantum_s / 60``
  (at least one request for RPM). The ``max`` lets a request larger than the
  quantum in once the debt has fully drained, so anything up to the
  per-minute limit is admittable eventually while the long-run rate still
  never exceeds the limit. A request costing more than the whole TPM limit
  is refused for good ("Request too large").
- **the per-minute view** (``x-ratelimit-remaining-*`` and ``-reset-*``): a
  bucket of capacity ``limit``; remaining is ``limit - view_debt`` and reset
  the time until ``view_debt`` drains to zero.

With identical refill rates, the debt of both buckets evolves the same for
admitted traffic, so one number serves both. Rejected requests are where
they differ, because OpenAI counts failed requests toward RPM:

- A 429 adds 1 to the request ``view_debt`` (capped at the limit, so reset
  never exceeds a minute): the headers and the "Used N" of the message show
  the wasted requests.
- For admission, a 429 spends a request only if one is free right now (a
  request refused for lack of *tokens* uses up a request slot); it never
  creates debt. So a refusal never lengthens its own wait beyond one request
  interval, a client that sleeps ``retry-after-ms`` gets in (unless a
  competitor takes the slot first), and a client that hammers still gets the
  full rate: hammering is punished with 429s, never with starvation. (Had
  429s added debt, a client polling faster than the refill would be locked
  out for good.) Rejected requests are not charged tokens.

``window="fixed-minute"`` replaces the debt with a count per calendar minute,
as LiteLLM's proxy counts: up to the limit in any burst, then every request is
refused until the minute turns (``wait_s`` is the time to the turn).

:class:`RateLimits` is what the server holds: one :class:`RateLimiter` for all
models when the limits are explicit, or one per model with the published
tier-5 limits (``TIER_5``, the default), like a real account.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ratelane._core.durations import format_duration

from ._config import (
    TIER_5,
    Limit,
    LimitDialect,
    Window,
    account_limits,
    check_limit,
    tier_5_limits,
)

__all__ = ["Admission", "Dimension", "FixedWindow", "RateLimiter", "RateLimits", "limit_headers"]

_MINUTE_S = 60.0

# Float debt is compared with a tolerance: 1e-9 of a request is "no debt".
_EPSILON = 1e-9


class Dimension:
    """One limited quantity (requests or tokens) with its debt; not thread-safe."""

    __slots__ = ("burst", "debt", "limit", "rate", "updated", "view_debt")

    def __init__(self, limit: float, *, quantum_s: float, minimum_burst: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.burst = max(limit * quantum_s / 60.0, minimum_burst)
        self.debt = 0.0
        self.view_debt = 0.0
        self.updated = now

    def __repr__(self) -> str:
        return (
            f"Dimension(limit={self.limit:g}, burst={self.burst:g}, "
            f"debt={self.debt:.3f}, view_debt={self.view_debt:.3f})"
        )

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            drained = elapsed * self.rate
            self.debt = max(0.0, self.debt - drained)
            self.view_debt = max(0.0, self.view_debt - drained)
            self.updated = now

    def wait(self, cost: float) -> float:
        """Seconds until ``cost`` would be admitted, 0 if it is now."""
        excess = self.debt + cost - max(self.burst, cost)
        if excess <= _EPSILON * max(1.0, cost):
            return 0.0
        return excess / self.rate

    def charge(self, cost: float) -> None:
        self.debt += cost
        self.view_debt += cost

    def charge_rejected(self) -> None:
        """A refused request: counts in the view; for admission only if a request is free."""
        self.view_debt = min(self.view_debt + 1.0, max(self.view_debt, self.limit))
        if self.wait(1.0) == 0.0:
            self.debt += 1.0

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.limit - self.view_debt + _EPSILON))

    @property
    def reset_s(self) -> float:
        return self.view_debt / self.rate

    @property
    def used(self) -> int:
        return math.ceil(self.view_debt - _EPSILON)


class FixedWindow:
    """One quantity counted per calendar minute, as LiteLLM counts; not thread-safe.

    Minutes start at ``origin + k * 60``. Anything fits while the minute's
    count stays within the limit; after that every request waits for the
    turn. Refusals count in ``used`` (LiteLLM's "current usage=301") but
    never in admission.
    """

    __slots__ = ("count", "limit", "origin", "refused", "updated", "window")

    def __init__(self, limit: float, *, origin: float, now: float, used_up: bool = False) -> None:
        self.limit = limit
        self.origin = origin
        self.updated = now
        self.window = math.floor((now - origin) / _MINUTE_S)
        self.count = limit if used_up else 0.0
        self.refused = 0

    def __repr__(self) -> str:
        return (
            f"FixedWindow(limit={self.limit:g}, count={self.count:g}, reset_s={self.reset_s:.3f})"
        )

    def refill(self, now: float) -> None:
        self.updated = max(self.updated, now)
        window = math.floor((self.updated - self.origin) / _MINUTE_S)
        if window != self.window:
            self.window = window
            self.count = 0.0
            self.refused = 0

    def wait(self, cost: float) -> float:
        if self.count + cost <= self.limit + _EPSILON * max(1.0, cost):
            return 0.0
        return self.reset_s

    def charge(self, cost: float) -> None:
        self.count += cost

    def charge_rejected(self) -> None:
        self.refused += 1

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.limit - self.count + _EPSILON))

    @property
    def reset_s(self) -> float:
        """Seconds until the minute turns."""
        return max(0.0, self.origin + (self.window + 1) * _MINUTE_S - self.updated)

    @property
    def used(self) -> int:
        return math.ceil(self.count - _EPSILON) + self.refused


Meter = Dimension | FixedWindow


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request, plus the headers to send with the answer.

    ``kind`` is ``None`` when admitted, else ``"requests"`` or ``"tokens"``
    (the dimension that refused; the one with the longer wait when both do)
    or ``"too_large"``. ``wait_s`` is the
    exact time until the same request would be admitted, were nothing else to
    arrive meanwhile (0 when admitted, ``inf`` when too large).
    """

    kind: Literal["requests", "tokens", "too_large"] | None
    wait_s: float
    headers: dict[str, str]
    limit: int = 0
    used: int = 0
    requested: int = 0

    @property
    def admitted(self) -> bool:
        return self.kind is None


class RateLimiter:
    """RPM and TPM buckets for the whole server; thread-safe, clock injected.

    One limit applies to all models (the real API limits per model; tests and
    benchmarks use one model, and a shared limit is the stricter case).
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        quantum_s: float,
        clock: Callable[[], float],
        window: Window = "bucket",
        window_origin: float = 0.0,
        first_window_used: bool = False,
        dialect: LimitDialect | None = "openai",
    ) -> None:
        self._clock = clock
        self._quantum_s = quantum_s
        self._window = window
        self._origin = window_origin
        self._used_up = first_window_used
        self._dialect = dialect
        self._lock = threading.Lock()
        self._requests: Meter | None = None
        self._tokens: Meter | None = None
        self.set_limits(rpm=rpm, tpm=tpm)
        self._used_up = False  # only the first minute starts used up, not a later limit

    def __repr__(self) -> str:
        return f"RateLimiter(requests={self._requests!r}, tokens={self._tokens!r})"

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """``(rpm, tpm)``, ``None`` for an unlimited dimension."""
        with self._lock:
            return (
                None if self._requests is None else self._requests.limit,
                None if self._tokens is None else self._tokens.limit,
            )

    @property
    def is_limited(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def set_limits(self, *, rpm: float | None, tpm: float | None) -> None:
        """Replace both limits; the debt already spent carries over to the new limit."""
        check_limit("rpm", rpm)
        check_limit("tpm", tpm)
        with self._lock:
            now = self._clock()
            self._requests = self._replace(self._requests, rpm, now, minimum_burst=1.0)
            self._tokens = self._replace(self._tokens, tpm, now, minimum_burst=0.0)

    def _replace(
        self, old: Meter | None, limit: float | None, now: float, *, minimum_burst: float
    ) -> Meter | None:
        if limit is None:
            return None
        if self._window == "fixed-minute":
            window = FixedWindow(limit, origin=self._origin, now=now, used_up=self._used_up)
            if isinstance(old, FixedWindow):
                old.refill(now)
                window.count, window.refused = old.count, old.refused
            return window
        new = Dimension(limit, quantum_s=self._quantum_s, minimum_burst=minimum_burst, now=now)
        if isinstance(old, Dimension):
            old.refill(now)
            new.debt = old.debt
            new.view_debt = old.view_debt
        return new

    def admit(self, tokens: int) -> Admission:
        """Charge one request of ``tokens`` if it fits now, else say why and for how long."""
        with self._lock:
            requests, token_dim = self._requests, self._tokens
            if requests is None and token_dim is None:
                return _UNLIMITED
            now = self._clock()
            if requests is not None:
                requests.refill(now)
            if token_dim is not None:
                token_dim.refill(now)
                if tokens > token_dim.limit:
                    if requests is not None:
                        requests.charge_rejected()
                    return Admission(
                        "too_large",
                        math.inf,
                        self._headers(),
                        limit=int(token_dim.limit),
                        requested=tokens,
                    )
            wait_requests = 0.0 if requests is None else requests.wait(1.0)
            wait_tokens = 0.0 if token_dim is None else token_dim.wait(float(tokens))
            if wait_requests == 0.0 and wait_tokens == 0.0:
                if requests is not None:
                    requests.charge(1.0)
                if token_dim is not None:
                    token_dim.charge(float(tokens))
                return Admission(None, 0.0, self._headers())
            # Name the dimension that refused before charging the refusal itself.
            by_requests = wait_requests > 0.0 and wait_requests >= wait_tokens
            if requests is not None:
                requests.charge_rejected()
                wait_requests = requests.wait(1.0)
            wait_s = max(wait_requests, wait_tokens)
            if by_requests:
                assert requests is not None  # a wait > 0 needs a limited dimension
                return Admission(
                    "requests",
                    wait_s,
                    self._headers(),
                    limit=int(requests.limit),
                    used=requests.used,
                    requested=1,
                )
            assert token_dim is not None
            return Admission(
                "tokens",
                wait_s,
                self._headers(),
                limit=int(token_dim.limit),
                used=token_dim.used,
                requested=tokens,
            )

    def headers(self) -> dict[str, str]:
        """The current ``x-ratelimit-*`` headers without charging anything."""
        with self._lock:
            now = self._clock()
            for dimension in (self._requests, self._tokens):
                if dimension is not None:
                    dimension.refill(now)
            return self._headers()

    def _headers(self) -> dict[str, str]:
        return limit_headers(self._dialect, self._requests, self._tokens)


def limit_headers(
    dialect: LimitDialect | None, requests: Meter | None, tokens: Meter | None
) -> dict[str, str]:
    """The rate-limit headers of ``dialect`` (``None``: none at all).

    An unlimited dimension sends none of its headers, like a compatible server
    without that limit; clients must tolerate absence. ``"openai"``: the six
    ``x-ratelimit-limit|remaining|reset-requests|tokens``. ``"litellm-key"``:
    LiteLLM's per-key names ``x-ratelimit-api_key-limit|remaining-requests|tokens``
    and ``x-litellm-key-rpm-limit`` / ``-tpm-limit``, with no reset headers.
    """
    headers: dict[str, str] = {}
    if dialect is None:
        return headers
    for meter, kind, short in ((requests, "requests", "rpm"), (tokens, "tokens", "tpm")):
        if meter is None:
            continue
        limit = str(int(meter.limit))
        if dialect == "openai":
            headers[f"x-ratelimit-limit-{kind}"] = limit
            headers[f"x-ratelimit-remaining-{kind}"] = str(meter.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(meter.reset_s)
        else:
            headers[f"x-ratelimit-api_key-limit-{kind}"] = limit
            headers[f"x-ratelimit-api_key-remaining-{kind}"] = str(meter.remaining)
            headers[f"x-litellm-key-{short}-limit"] = limit
    return headers


_UNLIMITED = Admission(None, 0.0, {})


class RateLimits:
    """The server's limits: one :class:`RateLimiter` for every model, or one per model.

    ``rpm`` / ``tpm`` are a number, ``None`` (unlimited) or ``TIER_5`` (the
    published tier-5 limit of each model, see ``TIER_5_LIMITS``). While either
    is ``TIER_5`` each model has its own limiter, created on its first request;
    otherwise all models share one. Thread-safe.
    """

    def __init__(
        self,
        *,
        rpm: Limit,
        tpm: Limit,
        quantum_s: float,
        clock: Callable[[], float],
        window: Window = "bucket",
        window_offset_s: float | None = None,
        first_window_used: bool = False,
        dialect: LimitDialect | None = "openai",
    ) -> None:
        check_limit("rpm", rpm)
        check_limit("tpm", tpm)
        # Minutes are calendar minutes unless an offset into the first one is given.
        offset = time.time() % _MINUTE_S if window_offset_s is None else window_offset_s
        origin = clock() - offset

        def make(rpm: float | None, tpm: float | None) -> RateLimiter:
            return RateLimiter(
                rpm=rpm,
                tpm=tpm,
                quantum_s=quantum_s,
                clock=clock,
                window=window,
                window_origin=origin,
                first_window_used=first_window_used,
                dialect=dialect,
            )

        self._make = make
        self._lock = threading.Lock()
        self._spec: tuple[Limit, Limit] = (rpm, tpm)
        self._by_model: dict[str, RateLimiter] = {}

    def __repr__(self) -> str:
        return f"RateLimits(spec={self._spec!r}, limiters={self._by_model!r})"

    @property
    def spec(self) -> tuple[Limit, Limit]:
        """``(rpm, tpm)`` as configured: numbers, ``None`` or ``TIER_5``."""
        return self._spec

    @property
    def per_model(self) -> bool:
        return TIER_5 in self._spec

    def resolve(self, model: str | None) -> tuple[float | None, float | None]:
        """The ``(rpm, tpm)`` that apply to ``model``."""
        rpm, tpm = self._spec
        table_rpm, table_tpm = tier_5_limits(model)
        return (
            table_rpm if rpm is TIER_5 else rpm,
            table_tpm if tpm is TIER_5 else tpm,
        )

    def for_model(self, model: str | None) -> RateLimiter:
        key = (model or "") if self.per_model else ""
        limiter = self._by_model.get(key)
        if limiter is None:
            with self._lock:
                limiter = self._by_model.get(key)
                if limiter is None:
                    limiter = self._make(*self.resolve(key))
                    self._by_model[key] = limiter
        return limiter

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """``(rpm, tpm)`` for all models; with ``TIER_5``, for models not in the table."""
        return self.resolve(None)

    @property
    def is_limited(self) -> bool:
        return self._spec != (None, None)

    def set_limits(self, *, rpm: Limit, tpm: Limit) -> None:
        """Replace both limits (``TIER_5`` with a number: see ``account_limits``).

        Spent budget carries over while the mode (shared or per model) stays;
        switching mode starts from fresh limiters."""
        check_limit("rpm", rpm)
        check_limit("tpm", tpm)
        rpm, tpm = account_limits(rpm, tpm)
        with self._lock:
            was_per_model = self.per_model
            self._spec = (rpm, tpm)
            if was_per_model != self.per_model:
                self._by_model = {}
                return
            for key, limiter in self._by_model.items():
                limiter_rpm, limiter_tpm = self.resolve(key)
                limiter.set_limits(rpm=limiter_rpm, tpm=limiter_tpm)

    def admit(self, tokens: int, model: str | None = None) -> Admission:
        return self.for_model(model).admit(tokens)

    def headers(self, model: str | None = None) -> dict[str, str]:
        return self.for_model(model).headers()
