"""Scheduling: a feeder, a fixed pool of workers, retries, and the shared rate governor.

One run = one feeder task reading items lazily into a bounded queue, and
``max_concurrency`` workers that each take a request, wait for admission,
send, judge the answer, retry within the RetryPolicy, and hand the Result to
the sink. Nothing here sleeps except the injected backoff ``sleep``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from ratelane._core.config import Price, RetryPolicy
from ratelane._core.errors import FatalError, RequestTimeout, TransportError
from ratelane._core.models import ErrorInfo, Request, Result, RunStats, Usage
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS, estimate_input_tokens, output_budget
from ratelane._http.transport import Reply, Transport
from ratelane._http.wire import read_rate_limit_headers
from ratelane._limits.governor import RateGovernor

from .retry import Judgement, Verdict, backoff_wait, classify, param_to_drop, parse_retry_after

__all__ = ["Engine"]

logger = logging.getLogger("ratelane")

Sink = Callable[[Result], Awaitable[None]]
Item = tuple[int, "Request | Result"]
SleepFn = Callable[[float], Awaitable[None]]
_RETRYING = frozenset({Verdict.RETRY, Verdict.RETRY_RATE_LIMITED, Verdict.DROP_PARAM})


@dataclass(slots=True)
class _Attempt:
    """What one HTTP attempt produced, judged."""

    judgement: Judgement
    status: int | None = None
    body: Any = None
    request_id: str | None = None
    server_delay_s: float | None = None
    latency_s: float = 0.0
    raw: bytes | None = None


@dataclass(slots=True)
class _State:
    """One request across its attempts."""

    index: int
    request: Request
    body: Mapping[str, Any]  # the caller's; copied before any parameter is removed
    payload: bytes
    started: float
    charge: int = -1
    input_estimate: int = 0
    attempts: int = 0
    dropped: list[str] = field(default_factory=list)


class Engine:
    """Runs requests through one Transport under one RateGovernor and RetryPolicy."""

    def __init__(
        self,
        transport: Transport,
        governor: RateGovernor,
        policy: RetryPolicy,
        *,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        prices: Mapping[str, Price] | None = None,
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.governor = governor
        self.policy = policy
        self.default_output_tokens = default_output_tokens
        self.prices = dict(prices or {})
        self.stats = RunStats()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._dropped_by_model: dict[str, set[str]] = {}
        self._input_ratio = 1.0
        self._typical_tokens = 0
        self._streak_key: tuple[int | None, str | None] | None = None
        self._streak = 0
        self._fatal: tuple[str, str] | None = None
        self._stopping = False

    # -- one request ----------------------------------------------------------
    def _prepare(self, index: int, request: Request) -> _State:
        body = request.body
        dropped: list[str] = []
        model = body.get("model")
        if isinstance(model, str):
            known = self._dropped_by_model.get(model, ())
            dropped = [name for name in known if name in body]
            if dropped:
                body = {key: value for key, value in body.items() if key not in dropped}
        return _State(index, request, body, orjson.dumps(body), time.monotonic(), dropped=dropped)

    def _charge(self, state: _State) -> int:
        if state.charge >= 0:
            return state.charge
        estimate = state.input_estimate = estimate_input_tokens(state.body)
        if self._input_ratio > 1.0:
            estimate = math.ceil(estimate * self._input_ratio)
        if not state.request.path.endswith("/embeddings"):
            estimate += output_budget(state.body, self.default_output_tokens)
        state.charge = estimate
        return estimate

    async def execute(self, index: int, request: Request) -> Result:
        """Send one request with retries; never raises for HTTP or transport failures.

        Raises ``NotSent`` when the run stops before the request is sent.
        """
        state = self._prepare(index, request)
        if not isinstance(state.body.get("model"), str):
            return self._invalid(
                index,
                request,
                "the body has no model. HINT: pass model=... or put 'model' in the body",
            )
        first = await self._attempt(state)
        if first.judgement.verdict not in _RETRYING or self.policy.max_attempts == 1:
            return self._finish(state, first)
        # Retrying machinery only for requests that need it: the happy path stays cheap.
        replay = [first]

        async def attempt_again(state: _State) -> _Attempt:
            return replay.pop() if replay else await self._attempt(state)

        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_result(_wants_retry),
            sleep=self._sleep,
            retry_error_callback=_last_outcome,
            reraise=True,
        )
        attempt: _Attempt = await retrying(attempt_again, state)
        return self._finish(state, attempt)

    def _stop(self, retry_state: RetryCallState) -> bool:
        if self._fatal is not None:
            return True
        if stop_after_attempt(self.policy.max_attempts)(retry_state):
            return True
        deadline = self.policy.deadline_s
        if deadline is None:
            return False
        upcoming = retry_state.upcoming_sleep or 0.0
        elapsed = retry_state.seconds_since_start or 0.0
        return elapsed + upcoming > deadline

    def _wait(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        attempt = outcome.result() if outcome is not None and not outcome.failed else None
        if attempt is not None and attempt.judgement.verdict is Verdict.DROP_PARAM:
            return 0.0
        delay = attempt.server_delay_s if attempt is not None else None
        return backoff_wait(
            self.policy, retry_state.attempt_number - 1, server_delay_s=delay, rng=self._rng
        )

    async def _attempt(self, state: _State) -> _Attempt:
        charge = self._charge(state)
        token_limit = self.governor.token_limit
        if token_limit is not None and charge > token_limit:
            # The server would answer "Request too large" and waiting never helps.
            message = (
                f"request needs about {charge} tokens (input estimate plus output cap), more "
                f"than the whole tokens-per-minute limit of {token_limit:.0f}. HINT: lower "
                "max_output_tokens or shorten the input"
            )
            return _Attempt(Judgement(Verdict.PERMANENT, ErrorInfo("request_too_large", message)))
        if self.stopping:
            raise NotSent
        admitted_at = await self.governor.admit(charge)
        if self.stopping:
            # The run ended (fatal error or stop()) while this request queued for
            # admission: it was never sent, so it gets no Result at all.
            raise NotSent
        began = time.monotonic()
        if not state.attempts:
            # Latency runs from the first send, not from queueing for admission.
            state.started = began
        state.attempts += 1
        try:
            reply = await self.transport.post(state.request.path, state.payload)
        except TransportError as exc:
            self.governor.observe(None)
            code = "timeout" if isinstance(exc, RequestTimeout) else "connection_error"
            attempt = _Attempt(
                Judgement(Verdict.RETRY, ErrorInfo(code, str(exc))),
                latency_s=time.monotonic() - began,
            )
            self._log_attempt(state, attempt, charge)
            return attempt
        attempt = self._judge(state, reply, time.monotonic() - began, admitted_at)
        self._log_attempt(state, attempt, charge)
        return attempt

    def _judge(self, state: _State, reply: Reply, latency_s: float, sent_at: float) -> _Attempt:
        headers = reply.headers
        self.governor.observe(
            read_rate_limit_headers(headers), typical_tokens=self._typical_tokens, sent_at=sent_at
        )
        request_id = headers.get("x-request-id")
        try:
            body = orjson.loads(reply.raw) if reply.raw else None
        except orjson.JSONDecodeError:
            error = ErrorInfo(
                "invalid_json", f"HTTP {reply.status} with a body that is not valid JSON"
            )
            verdict = (
                Verdict.RETRY if reply.status < 400 or reply.status >= 500 else Verdict.PERMANENT
            )
            if reply.status in (408, 409, 429):
                verdict = Verdict.RETRY
            return _Attempt(
                Judgement(verdict, error), reply.status, None, request_id, None, latency_s
            )
        if 200 <= reply.status < 300 and body is None:
            error = ErrorInfo("invalid_json", f"HTTP {reply.status} with an empty body")
            return _Attempt(
                Judgement(Verdict.RETRY, error), reply.status, None, request_id, None, latency_s
            )
        judgement = classify(
            reply.status,
            body,
            should_retry_header=headers.get("x-should-retry"),
            request_body=state.body,
            droppable=self.policy.droppable_params,
        )
        attempt = _Attempt(judgement, reply.status, body, request_id, None, latency_s, reply.raw)
        verdict = judgement.verdict
        if verdict is Verdict.SUCCESS:
            return attempt
        if verdict in (Verdict.RETRY, Verdict.RETRY_RATE_LIMITED):
            message = judgement.error.message if judgement.error else None
            delay = parse_retry_after(
                headers.get("retry-after-ms"),
                headers.get("retry-after"),
                message if reply.status == 429 else None,
            )
            if delay is not None and delay > self.policy.max_retry_after_s:
                error = judgement.error or ErrorInfo(None, f"HTTP {reply.status}")
                attempt.judgement = Judgement(Verdict.PERMANENT, error)
                return attempt
            attempt.server_delay_s = delay
            if verdict is Verdict.RETRY_RATE_LIMITED:
                self.stats.rate_limited += 1
                pause = delay if delay is not None else 2 * self.policy.initial_wait_s
                if self.governor.cool_down(pause):
                    self.stats.cooldowns += 1
        elif verdict is Verdict.DROP_PARAM and judgement.error is not None:
            name = param_to_drop(judgement.error, state.body, self.policy.droppable_params)
            if name is None or name in state.dropped:
                attempt.judgement = Judgement(Verdict.PERMANENT, judgement.error)
            else:
                self._drop(state, name)
        elif verdict is Verdict.FATAL and judgement.error is not None:
            self._fatal = (judgement.error.code or f"http_{reply.status}", judgement.error.message)
        return attempt

    def _drop(self, state: _State, name: str) -> None:
        state.body = {key: value for key, value in state.body.items() if key != name}
        state.dropped.append(name)
        state.payload = orjson.dumps(state.body)
        state.charge = -1
        model = str(state.body.get("model"))
        known = self._dropped_by_model.setdefault(model, set())
        if name not in known:
            known.add(name)
            logger.warning(
                "model %s rejects the parameter %r: resending without it, and dropping it from "
                "later requests for this model",
                model,
                name,
            )

    def _log_attempt(self, state: _State, attempt: _Attempt, charge: int) -> None:
        if not logger.isEnabledFor(logging.DEBUG):  # cached by logging: cheap per attempt
            return
        body = attempt.body if isinstance(attempt.body, Mapping) else {}
        logger.debug(
            "attempt custom_id=%s model=%s attempt=%d status=%s verdict=%s latency=%.3fs "
            "tokens_charged=%d response_id=%s request_id=%s",
            state.request.custom_id,
            state.body.get("model"),
            state.attempts,
            attempt.status,
            attempt.judgement.verdict.value,
            attempt.latency_s,
            charge,
            body.get("id"),
            attempt.request_id,
        )

    def _finish(self, state: _State, attempt: _Attempt) -> Result:
        ok = attempt.judgement.verdict is Verdict.SUCCESS
        usage = Usage.from_body(attempt.body) if ok else None
        latency = time.monotonic() - state.started
        result = Result(
            index=state.index,
            custom_id=state.request.custom_id or f"request-{state.index}",
            ok=ok,
            status_code=attempt.status,
            raw_body=attempt.raw,
            error=None if ok else attempt.judgement.error,
            request_id=attempt.request_id,
            attempts=state.attempts,
            latency_s=latency,
            usage=usage,
            dropped_params=tuple(state.dropped),
            path=state.request.path,
        )
        self._account(state, result, attempt.judgement.verdict)
        return result

    def _invalid(self, index: int, request: Request, message: str) -> Result:
        result = Result(
            index=index,
            custom_id=request.custom_id or f"request-{index}",
            ok=False,
            error=ErrorInfo("invalid_request", message),
            path=request.path,
        )
        self.stats.failed += 1
        return result

    def _account(self, state: _State, result: Result, verdict: Verdict) -> None:
        stats = self.stats
        stats.attempts += result.attempts
        if result.attempts > 1:
            stats.retried += 1
        stats.latencies_s.append(result.latency_s)
        if result.ok:
            stats.succeeded += 1
            self._streak = 0
            self._streak_key = None
            usage = result.usage
            if usage is not None:
                self._learn_usage(state, usage)
                stats.input_tokens += usage.input_tokens
                stats.cached_tokens += usage.cached_tokens
                stats.output_tokens += usage.output_tokens
                stats.reasoning_tokens += usage.reasoning_tokens
                price = self.prices.get(str(state.body.get("model")))
                if price is not None:
                    cost = price.cost(
                        input_tokens=usage.input_tokens,
                        cached_tokens=usage.cached_tokens,
                        output_tokens=usage.output_tokens,
                    )
                    stats.cost_usd = (stats.cost_usd or 0.0) + cost
            return
        stats.failed += 1
        if verdict is Verdict.PERMANENT and result.error is not None:
            key = (result.status_code, result.error.code)
            self._streak = self._streak + 1 if key == self._streak_key else 1
            self._streak_key = key
            if self._streak >= self.policy.fatal_streak and self._fatal is None:
                self._fatal = (
                    "error_streak",
                    f"{self._streak} requests in a row failed the same way "
                    f"(status {result.status_code}, code {result.error.code}): "
                    f"{result.error.message}",
                )

    def _learn_usage(self, state: _State, usage: Usage) -> None:
        charged = self._charge(state)
        estimate = state.input_estimate
        if estimate > 0 and usage.input_tokens > 0:
            observed = usage.input_tokens / estimate
            # Only ever charge more than the character estimate: the server's own
            # admission charge is character-based, so charging less would overshoot.
            self._input_ratio = max(1.0, 0.9 * self._input_ratio + 0.1 * observed)
        self._typical_tokens = (
            charged if not self._typical_tokens else ((self._typical_tokens * 15 + charged) // 16)
        )

    # -- a whole run ------------------------------------------------------------
    @property
    def fatal(self) -> tuple[str, str] | None:
        """``(reason, message)`` once the run must stop, else ``None``."""
        return self._fatal

    def stop(self) -> None:
        """Stop taking new items; requests already started run to completion."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping or self._fatal is not None

    async def run(
        self,
        requests: Iterator[Item] | AsyncIterator[Item],
        sink: Sink,
        *,
        max_concurrency: int,
    ) -> RunStats:
        """Drain ``requests`` through ``max_concurrency`` workers, handing each Result to ``sink``.

        Workers pull items straight from the (lazy) iterator, so at most
        ``max_concurrency`` items are ever held. Items that are already a Result
        (invalid input) go straight to the sink. Raises FatalError after
        in-flight requests finish when the run must stop.
        """
        started = time.monotonic()
        self._fatal = None
        self._stopping = False
        self._streak = 0
        pull: Callable[[], Awaitable[Item | None]] | None = None
        iterator: Iterator[Item] = iter(())
        if isinstance(requests, AsyncIterator):
            lock = asyncio.Lock()
            source = requests

            async def pull_async() -> Item | None:
                async with lock:
                    return await anext(source, None)

            pull = pull_async
        else:
            iterator = requests

        async def work() -> None:
            while not self.stopping:
                item = next(iterator, None) if pull is None else await pull()
                if item is None:
                    return
                index, request = item
                if isinstance(request, Result):
                    await sink(request)
                    continue
                try:
                    result = await self.execute(index, request)
                except NotSent:
                    continue
                await sink(result)

        tasks = [asyncio.ensure_future(work()) for _ in range(max_concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stats.elapsed_s = time.monotonic() - started
        fatal = self.fatal  # set by workers while we awaited
        if fatal is not None:
            reason, message = fatal
            raise FatalError(f"run stopped: {message}", reason=reason, stats=self.stats)
        return self.stats


class NotSent(Exception):
    """A request dropped before it was sent, because the run is stopping."""


def _wants_retry(attempt: _Attempt) -> bool:
    return attempt.judgement.verdict in _RETRYING


def _last_outcome(retry_state: RetryCallState) -> _Attempt:
    outcome = retry_state.outcome
    assert outcome is not None
    result: _Attempt = outcome.result()
    return result
