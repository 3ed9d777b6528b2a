"""One run: a fixed pool of workers draining items, with its own stats, streak and stop state.

Workers pull items straight from the caller's (lazy) iterator inside one
``asyncio.TaskGroup``: the iterator is the feeder, so at most
``max_concurrency`` items are ever held and no queue hop costs CPU per item
(measured against a feeder task and a bounded queue, mock transport, 20,000
items, 64 workers: 50 us/item pulling, 58 with the queue).
Each worker waits for admission, sends, asks ``retry.decide`` what the answer
means, acts on the Decision, and hands the Result to the sink. The shared
parts (transport, governor, learned facts) belong to the Engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ratelane._core.batch_line import default_custom_id
from ratelane._core.errors import ConfigurationError, FatalError, TransportError
from ratelane._core.models import ErrorInfo, Request, Result, RunStats, Usage
from ratelane._http.wire import read_rate_limit_headers

from . import cached, circuit, spending
from .background import Background, Journal, store_false_refusal
from .breaker import BreakerState
from .retry import (
    Decision,
    Verdict,
    decide,
    decide_transport_error,
    fatal_reason,
    refuse_oversized,
    retrying,
)
from .stream import EventListener, StreamState, stream_attempt, streamed_body, with_ttft

if TYPE_CHECKING:
    from .breaker import CircuitBreaker
    from .engine import Engine

__all__ = ["EARLY_STREAK", "Item", "NotSent", "Run", "Sink"]

logger = logging.getLogger("ratelane")

Sink = Callable[[Result], Awaitable[None]]
Item = tuple[int, Request]

#: With no success yet in a run, this many identical permanent errors in a row
#: stop it (a wrong model, a proxy refusing the key): nothing has worked, so
#: waiting for ``RetryPolicy.fatal_streak`` would only send more doomed requests.
EARLY_STREAK = 5


class NotSent(Exception):
    """A request dropped before it was sent, because the run is stopping."""


@dataclass(slots=True)
class _State:
    """One request across its attempts."""

    index: int
    request: Request
    body: Mapping[str, Any]  # the caller's; copied before any parameter is removed
    payload: bytes
    started: float = 0.0  # the first send; set by the first attempt
    ended: float = 0.0  # the last answer (or transport error)
    charge: int = -1
    input_estimate: int = 0
    attempts: int = 0
    dropped: tuple[str, ...] = ()
    stream: StreamState | None = None  # Streaming (issue 12): set when this request streams
    # Operating a run (issue 14): the spend reserved for this request and what it
    # cost; attempts the circuit breaker forgave (failures during an outage).
    reserved_usd: float = 0.0
    reserved: bool = False
    cost_usd: float = 0.0
    forgiven: int = 0

    def forgiven_attempts(self) -> int:
        return self.forgiven


class Run:
    """Per-run state over a shared Engine. Make one with ``engine.new_run(max_concurrency=N)``."""

    def __init__(self, engine: Engine, *, max_concurrency: int, stream: bool = False) -> None:
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.engine = engine
        self.max_concurrency = max_concurrency
        self.stats = RunStats()
        self.in_flight = 0
        self._clock: Callable[[], float] = time.monotonic
        self._streak_key: tuple[int | None, str | None] | None = None
        self._streak = 0
        self._fatal: tuple[str, str] | None = None
        self._stopping = False
        # Looked up once per run: a logger's level is not expected to change mid-run.
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self.stream = stream  # Streaming (issue 12): stream every request that can
        #: Background mode (issue 12): set when the run asks for it, made on first use
        #: by a body with "background": true otherwise (with ``journal``).
        self.background: Background | None = None
        self.journal: Journal | None = None

    def __repr__(self) -> str:
        return (
            f"<Run max_concurrency={self.max_concurrency} in_flight={self.in_flight} "
            f"completed={self.stats.completed} stopping={self.stopping} fatal={self._fatal!r}>"
        )

    # -- control ------------------------------------------------------------------
    @property
    def fatal(self) -> tuple[str, str] | None:
        """``(reason, message)`` once the run must stop, else ``None``."""
        return self._fatal

    def stop(self) -> None:
        """Admit nothing new; requests already sent run to completion."""
        self._stopping = True
        if self.background is not None:  # background mode (issue 12): wake the pollers
            self.background.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping or self._fatal is not None

    # -- the whole run ------------------------------------------------------------
    async def drive(self, items: Iterator[Item] | AsyncIterator[Item], sink: Sink) -> RunStats:
        """Drain ``items`` through the worker pool, handing each Result to ``sink``.

        Items are Requests only: the API layer turns invalid input into failed
        Results (and stops a streak of them) before anything reaches the engine.
        Raises FatalError (with these stats) after in-flight requests finish
        when the run must stop.
        """
        self._clock = asyncio.get_running_loop().time
        started = self._clock()
        pull: Callable[[], Awaitable[Item | None]] | None = None
        iterator: Iterator[Item] = iter(())
        if isinstance(items, AsyncIterator):
            lock = asyncio.Lock()
            source = items

            async def pull_async() -> Item | None:
                async with lock:
                    return await anext(source, None)

            pull = pull_async
        else:
            iterator = items

        async def work() -> None:
            while not self.stopping:
                item = next(iterator, None) if pull is None else await pull()
                if item is None:
                    return
                index, request = item
                try:
                    result = await self.execute(index, request)
                except NotSent:
                    continue
                await sink(result)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.max_concurrency):
                    group.create_task(work())
        except BaseExceptionGroup as failed:
            # A sink or an iterator raised: surface the first error as itself.
            raise failed.exceptions[0] from None
        finally:
            self.stats.elapsed_s = self._clock() - started
        fatal = self._fatal
        if fatal is not None:
            reason, message = fatal
            raise FatalError(f"run stopped: {message}", reason=reason, stats=self.stats)
        return self.stats

    # -- one request ----------------------------------------------------------------
    async def execute(
        self, index: int, request: Request, *, events: EventListener | None = None
    ) -> Result:
        """Send one request with retries; never raises for HTTP or transport failures.

        Raises ``NotSent`` when the run stops before the request is sent.
        ``events`` (Streaming, issue 12) streams this request and receives its events.
        """
        self.in_flight += 1
        state: _State | None = None
        try:
            engine = self.engine
            if engine.cache is not None:  # response cache (issue 14)
                hit = cached.from_cache(engine.cache, index, request)
                if hit is not None:
                    return self._from_cache(hit)
            state = self._prepare(index, request)
            if not isinstance(state.body.get("model"), str):
                return self._invalid(
                    index,
                    request,
                    "the body has no model. HINT: pass model=... or put 'model' in the body",
                )
            recall = engine.seed_limits
            if recall is not None:  # remembered limits (issue 14): at the first request
                engine.seed_limits = None
                recall.seed(state.body, engine.governor)
            if engine.spend is not None:  # spend cap (issue 14)
                await self._reserve(state)
            if self.background is not None or state.body.get("background") is True:
                return await self._background_execute(state)  # background mode (issue 12)
            # Streaming (issue 12): the run's option, a listener, or the body's own "stream": true
            # (sent plainly, its SSE answer would fail as invalid JSON on every attempt).
            if self.stream or events is not None or request.body.get("stream") is True:
                streamed = streamed_body(state.body, request.path)
                if streamed is not None:
                    state.body, state.payload = streamed, orjson.dumps(streamed)
                    state.stream = StreamState(events)
            first = await self._attempt(state)
            if first.verdict is Verdict.SUCCESS or not first.retries:
                return self._finish(state, first)
            if self.engine.policy.max_attempts == 1:
                return self._finish(state, first)
            return self._finish(state, await self._retry(state, first))
        finally:
            self.in_flight -= 1
            if state is not None and state.reserved:  # spend cap (issue 14)
                self._settle(state)

    async def _retry(self, state: _State, first: Decision) -> Decision:
        """The last Decision of a request whose first one asked for a retry."""
        # Retrying machinery only for requests that need it: the happy path stays cheap.
        replay = [first]

        async def attempt_again(state: _State) -> Decision:
            return replay.pop() if replay else await self._attempt(state)

        engine = self.engine
        again = retrying(
            engine.policy,
            sleep=engine.sleep,
            rng=engine.rng,
            stopped=self._is_fatal,
            forgiven=state.forgiven_attempts,  # circuit breaker (issue 14)
        )
        last: Decision = await again(attempt_again, state)
        return last

    async def _background_execute(self, state: _State) -> Result:
        """Background mode (issue 12): re-attach or create, then poll (see background.py)."""
        background = self.background
        if background is None:
            background = self.background = Background(journal=self.journal, rng=self.engine.rng)
        response_id = background.attached(state.request.custom_id)
        if response_id is not None:
            return self._finish(state, await background.reattach(self, state, response_id))
        if background.enabled and state.body.get("background") is not True:
            state.body = {**state.body, "background": True}
            state.payload = orjson.dumps(state.body)
        if state.body.get("background") is True and state.body.get("store") is False:
            return self._finish(state, Decision(Verdict.PERMANENT, store_false_refusal()))
        last = await self._attempt(state)
        if last.retries and self.engine.policy.max_attempts > 1:
            last = await self._retry(state, last)
        return self._finish(state, await background.settle(self, state, last))

    def _is_fatal(self) -> bool:
        return self._fatal is not None

    def _prepare(self, index: int, request: Request) -> _State:
        body = request.body
        dropped: tuple[str, ...] = ()
        known = self.engine.known_drops(body.get("model"))
        if known:
            dropped = tuple(name for name in known if name in body)
            if dropped:
                body = {key: value for key, value in body.items() if key not in dropped}
        return _State(index, request, body, orjson.dumps(body), dropped=dropped)

    def _charge(self, state: _State) -> int:
        if state.charge < 0:
            state.charge, state.input_estimate = self.engine.charge_of(
                state.body, state.request.path
            )
        return state.charge

    async def _attempt(self, state: _State) -> Decision:
        engine = self.engine
        governor = engine.governor
        charge = self._charge(state)
        refused = refuse_oversized(charge, governor.token_limit)
        if refused is not None:
            return refused
        if self._stopping or self._fatal is not None:
            raise NotSent
        breaker = engine.breaker
        probe = False
        if breaker is not None and breaker.state is not BreakerState.CLOSED:  # issue 14
            admitted_at, probe = await self._admit_through_circuit(charge)
        else:
            # Admission without a coroutine when there is room: the usual case.
            admitted = governor.try_admit(charge)
            admitted_at = await governor.admit(charge) if admitted is None else admitted
            if breaker is not None and breaker.state is not BreakerState.CLOSED:  # issue 14
                admitted_at, probe = await self._admit_through_circuit(charge)  # opened meanwhile
        if self._stopping or self._fatal is not None:
            # The run ended (fatal error or stop()) while this request queued for
            # admission: it was never sent, so it gets no Result at all.
            raise self._not_sent(probe)
        clock = self._clock
        began = clock()
        if not state.attempts:
            # Latency runs from the first send, not from queueing for admission.
            state.started = began
        state.attempts += 1
        if state.stream is not None:  # Streaming (issue 12): the same bookkeeping, read as SSE
            try:
                decision = await stream_attempt(
                    engine,
                    state.stream,
                    state.request.path,
                    state.payload,
                    state.body,
                    attempt=state.attempts,
                    sent_at=admitted_at,
                    clock=clock,
                )
            except BaseException:
                if probe and breaker is not None:  # a cancelled probe (issue 14)
                    breaker.abandon_probe()
                raise
            state.ended = clock()
            if decision.verdict is not Verdict.SUCCESS:
                self._act(state, decision, admitted_at)
        else:
            try:
                reply = await engine.transport.post(state.request.path, state.payload)
            except TransportError as exc:
                state.ended = clock()
                governor.observe(None)
                decision = decide_transport_error(exc)
            except BaseException:
                if probe and breaker is not None:  # a cancelled probe (issue 14)
                    breaker.abandon_probe()
                raise
            else:
                state.ended = clock()
                headers = reply.headers
                governor.observe(
                    read_rate_limit_headers(headers),
                    typical_tokens=engine.typical_tokens,
                    sent_at=admitted_at,
                )
                decision = decide(reply.status, headers, reply.raw, engine.policy, state.body)
                if decision.verdict is not Verdict.SUCCESS:
                    self._act(state, decision, admitted_at)
        if breaker is not None:  # circuit breaker (issue 14)
            if probe or decision.verdict is not Verdict.SUCCESS:
                self._report_to_circuit(breaker, state, decision, probe)
            else:
                breaker.record_success(state.ended)
        if self._debug:
            self._log_attempt(state, decision, charge, state.ended - began)
        return decision

    def _act(self, state: _State, decision: Decision, sent_at: float) -> None:
        """The run-wide side of a failed attempt: pause, drop a parameter, or stop."""
        verdict = decision.verdict
        if verdict is Verdict.RETRY_RATE_LIMITED:
            self.stats.rate_limited += 1
            if decision.cooldown_s is not None and self.engine.governor.cool_down(
                decision.cooldown_s, sent_at=sent_at
            ):
                self.stats.cooldowns += 1
        elif verdict is Verdict.DROP_PARAM:
            names = decision.drop
            state.body = {key: value for key, value in state.body.items() if key not in names}
            state.dropped = (*state.dropped, *names)
            state.payload = orjson.dumps(state.body)
            state.charge = -1
            model = str(state.body.get("model"))
            for name in names:
                self.engine.remember_drop(model, name)
        elif verdict is Verdict.FATAL and self._fatal is None:
            error = decision.error or ErrorInfo(None, f"HTTP {decision.status}")
            self._fatal = (fatal_reason(decision), error.message)

    def _log_attempt(
        self, state: _State, decision: Decision, charge: int, latency_s: float
    ) -> None:
        body = decision.body if isinstance(decision.body, Mapping) else {}
        logger.debug(
            "attempt custom_id=%s model=%s attempt=%d status=%s verdict=%s latency=%.3fs "
            "tokens_charged=%d response_id=%s request_id=%s",
            state.request.custom_id,
            state.body.get("model"),
            state.attempts,
            decision.status,
            decision.verdict.value,
            latency_s,
            charge,
            body.get("id"),
            decision.request_id,
        )

    def _finish(self, state: _State, decision: Decision) -> Result:
        ok = decision.verdict is Verdict.SUCCESS
        usage = Usage.from_body(decision.body) if ok else None
        request = state.request
        attempts = state.attempts
        # Sent: from the first send to the last answer; refused before sending: 0.
        latency_s = state.ended - state.started if attempts else 0.0
        result = Result(  # positional, in field order: this runs once per request
            state.index,
            request.custom_id or default_custom_id(state.index),
            ok,
            decision.status,
            decision.raw,
            None if ok else decision.error,
            decision.request_id,
            attempts,
            latency_s,
            usage,
            state.dropped,
            request.path,
            decision.request_id_header,
        )
        stats = self.stats
        stats.attempts += attempts
        if attempts > 1:
            stats.retried += 1
        stats.latencies_s.append(latency_s)
        if ok:
            self._account_success(state, usage)
            cache = self.engine.cache
            if cache is not None and cached.cacheable(state.request.body):  # issue 14
                cache.put(state.request.path, state.request.body, decision.raw or b"")
        else:
            if decision.retries:  # transient, not the line's fault (issue 14)
                stats.failed_transient += 1
            self._account_failure(result, decision.verdict)
        if state.stream is not None:  # Streaming (issue 12): time to first token
            result = with_ttft(result, state.stream, state.started, stats)
        return result

    def _invalid(self, index: int, request: Request, message: str) -> Result:
        result = Result(
            index=index,
            custom_id=request.custom_id or default_custom_id(index),
            ok=False,
            error=ErrorInfo("invalid_request", message),
            path=request.path,
        )
        self._account_failure(result, Verdict.PERMANENT)
        return result

    def _account_success(self, state: _State, usage: Usage | None) -> None:
        stats = self.stats
        stats.succeeded += 1
        self._streak = 0
        self._streak_key = None
        if usage is None:
            return
        engine = self.engine
        engine.learn_usage(usage, self._charge(state), state.input_estimate)
        state.cost_usd = stats.count_usage(usage, engine.price_of(state.body["model"]))

    def _account_failure(self, result: Result, verdict: Verdict) -> None:
        """Count a failure; a streak of identical permanent ones stops the run.

        The streak limit is ``fatal_streak``, or EARLY_STREAK while nothing in
        the run has succeeded yet. A body with no model counts like a server error.
        """
        self.stats.failed += 1
        error = result.error
        if verdict is not Verdict.PERMANENT or error is None:
            return
        key = (result.status_code, error.code)
        self._streak = self._streak + 1 if key == self._streak_key else 1
        self._streak_key = key
        limit = self.engine.policy.fatal_streak
        if not self.stats.succeeded:
            limit = min(limit, EARLY_STREAK)
        if self._streak >= limit and self._fatal is None:
            self._fatal = (
                "error_streak",
                f"{self._streak} requests in a row failed the same way "
                f"(status {result.status_code}, code {error.code}): {error.message}",
            )

    # -- operating a run (issue 14): spend cap, circuit breaker, response cache ------
    async def _reserve(self, state: _State) -> None:
        """Reserve the request's worst-case cost, waiting for requests in flight to settle
        if it does not fit yet; or stop the run (``NotSent``)."""
        spend = self.engine.spend
        assert spend is not None
        self._charge(state)
        reserved, refusal = await spending.reserve(
            spend,
            self.engine,
            state.body,
            state.request.path,
            state.input_estimate,
            stopping=lambda: self.stopping,
        )
        if refusal is not None:
            if self._fatal is None:
                self._fatal = ("max_cost", refusal)
            raise NotSent
        if reserved is None:  # the run began stopping while this request waited
            raise NotSent
        state.reserved_usd, state.reserved = reserved, True

    def _settle(self, state: _State) -> None:
        spend = self.engine.spend
        if spend is not None:
            spend.settle(state.reserved_usd, state.cost_usd)
        state.reserved_usd, state.reserved = 0.0, False

    def _not_sent(self, probe: bool) -> NotSent:
        """A probe that will not be sent lets another request probe."""
        if probe and self.engine.breaker is not None:
            self.engine.breaker.abandon_probe()
        return NotSent()

    async def _admit_through_circuit(self, charge: int) -> tuple[float, bool]:
        """The circuit is not closed: wait for it, then for admission; again if it opened
        while this request queued for admission. ``(admitted at, probe)``.

        The probe is sent at once, past the rate governor: one request per pause
        cannot hurt the rate, and behind requests queued for admission before the
        circuit opened it would wait for all of them.
        """
        breaker = self.engine.breaker
        assert breaker is not None
        while True:
            if await self._wait_for_circuit():
                return self._clock(), True
            admitted_at = await self.engine.governor.admit(charge)
            if breaker.state is BreakerState.CLOSED:
                return admitted_at, False

    async def _wait_for_circuit(self) -> bool:
        """Wait while the circuit is open; True when this attempt is the probe."""
        breaker = self.engine.breaker
        assert breaker is not None
        probe = await breaker.admit()
        if self.stopping:
            if probe:
                breaker.abandon_probe()
            raise NotSent
        return probe

    def _report_to_circuit(
        self, breaker: CircuitBreaker, state: _State, decision: Decision, probe: bool
    ) -> None:
        forgiven, opened = circuit.report(breaker, decision, probe=probe)
        if forgiven:
            state.forgiven += 1
        if opened:
            self.stats.circuit_opens += 1

    def _from_cache(self, result: Result) -> Result:
        stats = self.stats
        stats.succeeded += 1
        stats.cache_hits += 1
        self._streak = 0
        self._streak_key = None
        return result
