"""Virtual time for tests: an event loop whose clock jumps, and a scripted mock Transport.

``VirtualTimeLoop`` makes minutes of rate limiting and backoff run in
microseconds with exact timestamps. ``MockTransport`` stands in for the
aiohttp Transport (same ``post(path, payload) -> Reply``): it answers on the
virtual clock, optionally behind the fake server's own rate limiter
(``ratelane.testing._ratelimit``), and records every call it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from ratelane._http.transport import Reply
from ratelane.testing._ratelimit import RateLimiter

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready.

    Minutes of rate limiting run in microseconds, and every wake-up time is
    exact, so assertions can be tight without ever depending on the machine.
    Only for code that waits on timers, never on sockets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.virtual_now = 0.0

    def time(self) -> float:
        return self.virtual_now

    def _run_once(self) -> None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not self._ready and scheduled:  # type: ignore[attr-defined]
            # A microsecond of progress even when the next timer is "now": float
            # rounding can make a limiter re-arm at the same instant forever.
            self.virtual_now = max(self.virtual_now + 1e-6, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh VirtualTimeLoop (an hour of virtual time at most)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout=3600))
    finally:
        loop.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer: ``body`` is bytes as sent, or a value to encode as JSON."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One request the mock received: when (virtual seconds), where, what, and the answer."""

    time_s: float
    path: str
    body: dict[str, Any]
    status: int


def ok_body(body: Mapping[str, Any], *, input_tokens: int = 10, output_tokens: int = 5) -> Any:
    """A minimal successful Responses body echoing ``body``'s model."""
    return {
        "id": "resp_mock",
        "object": "response",
        "status": "completed",
        "model": body.get("model"),
        "output": [],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }


Script = Callable[[str, dict[str, Any], int], Answer | None]


class MockTransport:
    """A Transport double on the virtual clock.

    ``script(path, body, call_number)`` returns the Answer for a call (1-based
    ``call_number``) or ``None`` for a success. With ``rpm``/``tpm`` a server
    rate limiter admits or refuses each call first, as FakeOpenAI does
    (429 with retry-after-ms), and ``rate_limit_headers`` sends its headers.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        latency_s: float = 0.05,
        rpm: float | None = None,
        tpm: float | None = None,
        rate_limit_headers: bool = True,
        quantum_s: float = 1.0,
    ) -> None:
        self.script = script
        self.latency_s = latency_s
        self.rate_limit_headers = rate_limit_headers
        self.calls: list[Call] = []
        self.limiter: RateLimiter | None = None
        if rpm is not None or tpm is not None:
            self.limiter = RateLimiter(rpm=rpm, tpm=tpm, quantum_s=quantum_s, clock=_loop_time)

    @property
    def statuses(self) -> list[int]:
        return [call.status for call in self.calls]

    async def post(self, path: str, payload: bytes) -> Reply:
        body = orjson.loads(payload)
        now = asyncio.get_running_loop().time()
        answer = self._answer(path, body)
        self.calls.append(Call(now, path, body, answer.status))
        latency = self.latency_s if answer.latency_s is None else answer.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        raw = answer.body if isinstance(answer.body, bytes) else orjson.dumps(answer.body)
        headers = CIMultiDictProxy(CIMultiDict(answer.headers))
        return Reply(answer.status, headers, raw)

    def _answer(self, path: str, body: dict[str, Any]) -> Answer:
        headers: dict[str, str] = {"x-request-id": f"req_{len(self.calls) + 1}"}
        limiter = self.limiter
        if limiter is not None:
            admission = limiter.admit(len(str(body.get("input", ""))) // 4 + 16)
            if self.rate_limit_headers:
                headers.update(admission.headers)
            if not admission.admitted:
                headers["retry-after-ms"] = str(max(1, round(admission.wait_s * 1000)))
                error = {"message": "Rate limit reached", "code": "rate_limit_exceeded"}
                return Answer(429, {"error": error}, headers)
        scripted = self.script(path, body, len(self.calls) + 1) if self.script else None
        if scripted is None:
            return Answer(200, ok_body(body), headers)
        return Answer(
            scripted.status,
            scripted.body,
            {**headers, **scripted.headers},
            scripted.latency_s,
        )


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
