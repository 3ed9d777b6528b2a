"""The client-level engine: one Transport, one RateGovernor, one RetryPolicy, and what it learned.

An Engine is shared by every run of a Client: the rate budget, the cool-down,
the parameters each model rejected and the input/output token ratios belong
here, so two runs at once share them. Everything that belongs to one run
(workers, stats, the error streak, fatal and stop state) lives in a
:class:`~ratelane._engine.run.Run`, made by :meth:`Engine.new_run`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ratelane._core.config import Price, RetryPolicy
from ratelane._core.errors import FatalError
from ratelane._core.models import Request, Result, RunStats, Usage
from ratelane._core.prices import price_for
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS, estimate_input_tokens, output_budget
from ratelane._http.transport import Transport
from ratelane._limits.governor import RateGovernor

from .breaker import CircuitBreaker
from .remembered import LimitRecall
from .run import Item, NotSent, Run, Sink
from .spend import SpendCap
from .stream import EventListener

if TYPE_CHECKING:
    from ratelane._state.response_cache import ResponseCache

__all__ = ["Engine", "Item", "NotSent", "Run", "Sink", "SleepFn"]

logger = logging.getLogger("ratelane")

SleepFn = Callable[[float], Awaitable[None]]


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
        spend: SpendCap | None = None,
        breaker: CircuitBreaker | None = None,
        cache: ResponseCache | None = None,
        recall: LimitRecall | None = None,
    ) -> None:
        self.transport = transport
        self.governor = governor
        self.policy = policy
        self.default_output_tokens = default_output_tokens
        self.prices = dict(prices or {})
        self._price_memo: dict[str, Price | None] = {}
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._dropped_by_model: dict[str, set[str]] = {}
        self._input_ratio = 1.0
        #: A typical request's token charge, for the governor's discovery.
        self.typical_tokens = 0
        # Operating a run (issue 14), each None when off: the spend cap, the circuit
        # breaker, the response cache, and the remembered limits (``recall`` stays for
        # saving at close; ``seed_limits`` is cleared once the first request seeded them).
        self.spend = spend
        self.breaker = breaker
        self.cache = cache
        self.recall = recall
        self.seed_limits: LimitRecall | None = recall
        # Shared budget (issue 13): a governor with settle() corrects charges from usage.
        self._settle: Callable[[int, int], None] | None = getattr(governor, "settle", None)

    # -- runs -------------------------------------------------------------------
    def new_run(self, *, max_concurrency: int, stream: bool = False) -> Run:
        """A run with its own stats, streak, fatal and stop state; cheap.

        ``stream`` (Streaming, issue 12): stream every request whose endpoint can.
        """
        return Run(self, max_concurrency=max_concurrency, stream=stream)

    async def run(
        self,
        items: Iterator[Item] | AsyncIterator[Item],
        sink: Sink,
        *,
        max_concurrency: int,
    ) -> RunStats:
        """``new_run(max_concurrency=...).drive(items, sink)``."""
        return await self.new_run(max_concurrency=max_concurrency).drive(items, sink)

    async def execute(
        self, index: int, request: Request, *, events: EventListener | None = None
    ) -> Result:
        """Send one request with retries, in a run of its own; never raises for HTTP failures.

        With ``events`` (Streaming, issue 12) the request streams, each event handed to it.
        Raises ``NotSent`` if it could not be sent, ``FatalError`` when that is because
        the run had to stop first (the spend cap).
        """
        run = self.new_run(max_concurrency=1)
        try:
            return await run.execute(index, request, events=events)
        except NotSent:
            if run.fatal is None:
                raise
            reason, message = run.fatal  # not sent because of a stop (issue 14: spend cap)
            raise FatalError(f"not sent: {message}", reason=reason, stats=run.stats) from None

    # -- learned per-model facts ---------------------------------------------------
    def known_drops(self, model: Any) -> set[str] | tuple[()]:
        """Parameters ``model`` rejected earlier (empty when none)."""
        dropped = self._dropped_by_model  # empty in almost every run: checked first
        return dropped.get(model, ()) if dropped and isinstance(model, str) else ()

    def remember_drop(self, model: str, name: str) -> None:
        known = self._dropped_by_model.setdefault(model, set())
        if name not in known:
            known.add(name)
            logger.warning(
                "model %s rejects the parameter %r: resending without it, and dropping it from "
                "later requests for this model",
                model,
                name,
            )

    def charge_of(self, body: Mapping[str, Any], path: str) -> tuple[int, int]:
        """``(tokens to charge, raw input estimate)`` for one attempt of ``body``."""
        estimate = estimate_input_tokens(body)
        charge = math.ceil(estimate * self._input_ratio) if self._input_ratio > 1.0 else estimate
        if not path.endswith("/embeddings"):
            charge += output_budget(body, self.default_output_tokens)
        return charge, estimate

    def price_of(self, model: str) -> Price | None:
        """``model``'s price in this engine's table (a dated snapshot takes its alias's),
        remembered per model: no pattern match per result."""
        try:
            return self._price_memo[model]
        except KeyError:
            price = self._price_memo[model] = price_for(model, self.prices)
            return price

    @property
    def input_ratio(self) -> float:
        """Observed input tokens per estimated token (at least 1), for worst-case costs."""
        return self._input_ratio

    def learn_usage(self, usage: Usage, charged: int, input_estimate: int) -> None:
        if input_estimate > 0 and usage.input_tokens > 0:
            observed = usage.input_tokens / input_estimate
            # Only ever charge more than the character estimate: the server's own
            # admission charge is character-based, so charging less would overshoot.
            self._input_ratio = max(1.0, 0.9 * self._input_ratio + 0.1 * observed)
        typical = self.typical_tokens
        self.typical_tokens = charged if not typical else (typical * 15 + charged) // 16
        if self._settle is not None:  # shared budget (issue 13)
            self._settle(charged, usage.total_tokens)
