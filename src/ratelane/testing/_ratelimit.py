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
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ratelane._core.durations import format_duration

from ._config import check_limit

__all__ = ["Admission", "Dimension", "RateLimiter"]

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
    ) -> None:
        self._clock = clock
        self._quantum_s = quantum_s
        self._lock = threading.Lock()
        self._requests: Dimension | None = None
        self._tokens: Dimension | None = None
        self.set_limits(rpm=rpm, tpm=tpm)

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
        self, old: Dimension | None, limit: float | None, now: float, *, minimum_burst: float
    ) -> Dimension | None:
        if limit is None:
            return None
        new = Dimension(limit, quantum_s=self._quantum_s, minimum_burst=minimum_burst, now=now)
        if old is not None:
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
        # An unlimited dimension sends none of its three headers, like a
        # compatible server without that limit; clients must tolerate absence.
        headers: dict[str, str] = {}
        requests, tokens = self._requests, self._tokens
        if requests is not None:
            headers["x-ratelimit-limit-requests"] = str(int(requests.limit))
            headers["x-ratelimit-remaining-requests"] = str(requests.remaining)
            headers["x-ratelimit-reset-requests"] = format_duration(requests.reset_s)
        if tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(int(tokens.limit))
            headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
            headers["x-ratelimit-reset-tokens"] = format_duration(tokens.reset_s)
        return headers


_UNLIMITED = Admission(None, 0.0, {})
