"""What a Client builds to operate a run (issue 14): prices, spend cap, breaker, cache, memory.

Checked when the Client is made (a bad price file or cap raises
``ConfigurationError`` before anything is sent), built at each ``async with``
(a breaker and a cache belong to one event loop and one open file), and
closed at its end: the response cache closed, the learned limits remembered.
"""

from __future__ import annotations

import os
from typing import TypedDict

from ratelane._core.config import Price
from ratelane._core.errors import ConfigurationError
from ratelane._core.prices import BUILTIN_PRICES, load_prices
from ratelane._engine.breaker import BreakerPolicy, CircuitBreaker
from ratelane._engine.engine import Engine
from ratelane._engine.remembered import LimitRecall
from ratelane._engine.spend import SpendCap
from ratelane._state.remembered_limits import LimitMemory
from ratelane._state.response_cache import ResponseCache

from .options import Prices

__all__ = ["EngineParts", "Operating", "price_table"]


def price_table(prices: Prices) -> dict[str, Price]:
    """The built-in table, overridden by ``prices`` (a table, or a JSON file's path)."""
    if prices is None:
        return dict(BUILTIN_PRICES)
    if isinstance(prices, str | os.PathLike):
        return load_prices(os.fspath(prices))
    return {**BUILTIN_PRICES, **prices}


class EngineParts(TypedDict):
    spend: SpendCap | None
    breaker: CircuitBreaker | None
    cache: ResponseCache | None
    recall: LimitRecall | None


class Operating:
    """The issue-14 options of one Client, validated; :meth:`open` builds the Engine's parts."""

    def __init__(
        self,
        *,
        prices: Prices,
        max_cost: float | None,
        breaker: BreakerPolicy | bool,
        cache: str | os.PathLike[str] | None,
        remember_limits: bool,
        identity: tuple[str, str, str | None, str | None],
    ) -> None:
        self.prices = price_table(prices)
        if max_cost is not None:
            SpendCap(max_cost)  # validates: a ConfigurationError now, not at the first request
        if not isinstance(breaker, BreakerPolicy | bool):
            raise ConfigurationError(
                f"breaker must be True, False or a BreakerPolicy(...), got {breaker!r}"
            )
        self.max_cost = max_cost
        self.breaker = breaker
        self.cache_path = cache
        self.remember_limits = remember_limits
        self._identity = identity

    def open(self) -> EngineParts:
        policy = self.breaker
        base_url, api_key, organization, project = self._identity
        return EngineParts(
            spend=SpendCap(self.max_cost) if self.max_cost is not None else None,
            breaker=(
                None
                if policy is False
                else CircuitBreaker(policy if isinstance(policy, BreakerPolicy) else None)
            ),
            cache=ResponseCache(os.fspath(self.cache_path))
            if self.cache_path is not None
            else None,
            recall=(
                LimitRecall(
                    LimitMemory(),
                    base_url=base_url,
                    api_key=api_key,
                    organization=organization,
                    project=project,
                )
                if self.remember_limits
                else None
            ),
        )

    def close(self, engine: Engine) -> None:
        if engine.recall is not None:
            engine.recall.save(engine.governor)
        if engine.cache is not None:
            engine.cache.close()

    def __repr__(self) -> str:
        return (
            f"<Operating max_cost={self.max_cost!r} breaker={self.breaker!r} "
            f"cache={self.cache_path!r} remember_limits={self.remember_limits}>"
        )
