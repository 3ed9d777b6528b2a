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
from typing import Any

from ratelane._core.config import Price, RetryPolicy
from ratelane._core.models import Request, Result, RunStats, Usage
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS, estimate_input_tokens, output_budget
from ratelane._http.transport import Transport
from ratelane._limits.governor import RateGovernor

from .run import Item, NotSent, Run, Sink

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
    ) -> None:
        self.transport = transport
        self.governor = governor
        self.policy = policy
        self.default_output_tokens = default_output_tokens
        self.prices = dict(prices or {})
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._dropped_by_model: dict[str, set[str]] = {}
        self._input_ratio = 1.0
        #: A typical request's token charge, for the governor's discovery.
        self.typical_tokens = 0
        # Shared budget (issue 13): a governor with settle() corrects charges from usage.
        self._settle: Callable[[int, int], None] | None = getattr(governor, "settle", None)

    # -- runs -------------------------------------------------------------------
    def new_run(self, *, max_concurrency: int) -> Run:
        """A run with its own stats, streak, fatal and stop state; cheap."""
        return Run(self, max_concurrency=max_concurrency)

    async def run(
        self,
        items: Iterator[Item] | AsyncIterator[Item],
        sink: Sink,
        *,
        max_concurrency: int,
    ) -> RunStats:
        """``new_run(max_concurrency=...).drive(items, sink)``."""
        return await self.new_run(max_concurrency=max_concurrency).drive(items, sink)

    async def execute(self, index: int, request: Request) -> Result:
        """Send one request with retries, in a run of its own; never raises for HTTP failures."""
        return await self.new_run(max_concurrency=1).execute(index, request)

    # -- learned per-model facts ---------------------------------------------------
    def known_drops(self, model: Any) -> set[str] | tuple[()]:
        """Parameters ``model`` rejected earlier (empty when none)."""
        return self._dropped_by_model.get(model, ()) if isinstance(model, str) else ()

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

    def learn_usage(self, usage: Usage, *, charged: int, input_estimate: int) -> None:
        if input_estimate > 0 and usage.input_tokens > 0:
            observed = usage.input_tokens / input_estimate
            # Only ever charge more than the character estimate: the server's own
            # admission charge is character-based, so charging less would overshoot.
            self._input_ratio = max(1.0, 0.9 * self._input_ratio + 0.1 * observed)
        typical = self.typical_tokens
        self.typical_tokens = charged if not typical else (typical * 15 + charged) // 16
        if self._settle is not None:  # shared budget (issue 13)
            self._settle(charged, usage.total_tokens)
