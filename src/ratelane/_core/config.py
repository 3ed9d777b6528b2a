"""Frozen option values: retry policy, model profiles, prices."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = ["PROFILES", "Price", "Profile", "RetryPolicy"]

#: ``reasoning_effort`` is the Chat Completions form of ``reasoning``.
DEFAULT_DROPPABLE_PARAMS = frozenset(
    {"reasoning", "reasoning_effort", "temperature", "top_p", "seed"}
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Every bound on retrying, in one value. No code path waits longer than these allow.

    Wait before retry number ``k`` (0 for the first retry), "full jitter"::

        backoff  = uniform(0, min(max_wait_s, initial_wait_s * 2**k))
        wait     = max(backoff, min(server_delay, max_retry_after_s))

    where ``server_delay`` comes from ``retry-after-ms`` / ``retry-after`` when
    the server sent one. A server delay above ``max_retry_after_s`` means the
    request is given up (like openai-python >= 2.52). A request stops after
    ``max_attempts`` attempts, or when the next wait would end past
    ``deadline_s`` seconds from its first attempt (``None``: no deadline).

    ``droppable_params``: body parameters that, when the server rejects them
    as unsupported for a model, are removed and the request resent once.
    ``fatal_streak``: this many consecutive identical permanent errors with no
    success in between stop the whole run.
    """

    max_attempts: int = 6
    initial_wait_s: float = 0.5
    max_wait_s: float = 20.0
    max_retry_after_s: float = 120.0
    deadline_s: float | None = None
    droppable_params: frozenset[str] = DEFAULT_DROPPABLE_PARAMS
    fatal_streak: int = 50

    def __post_init__(self) -> None:
        _require(
            self.max_attempts >= 1, f"max_attempts must be at least 1, got {self.max_attempts}"
        )
        for name in ("initial_wait_s", "max_wait_s", "max_retry_after_s"):
            value = getattr(self, name)
            _require(
                isinstance(value, int | float) and math.isfinite(value) and value >= 0,
                f"{name} must be a finite number of seconds >= 0, got {value!r}",
            )
        _require(
            self.deadline_s is None or (math.isfinite(self.deadline_s) and self.deadline_s > 0),
            f"deadline_s must be a positive number of seconds or None, got {self.deadline_s!r}",
        )
        _require(
            self.fatal_streak >= 1, f"fatal_streak must be at least 1, got {self.fatal_streak}"
        )
        object.__setattr__(self, "droppable_params", frozenset(self.droppable_params))


@dataclass(frozen=True, slots=True)
class Profile:
    """A model routing preset: which model, how hard it thinks, how much it may write.

    ``reasoning_effort=None`` omits ``reasoning`` from the body (non-reasoning
    models reject it). Applied under the item's own body: a field the item
    sets wins.
    """

    model: str
    reasoning_effort: str | None = None
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        _require(bool(self.model), "Profile.model must be a non-empty model name")
        _require(
            self.max_output_tokens is None or self.max_output_tokens >= 16,
            f"max_output_tokens must be >= 16 (the API's minimum), got {self.max_output_tokens}",
        )

    def body_defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {"model": self.model}
        if self.reasoning_effort is not None:
            defaults["reasoning"] = {"effort": self.reasoning_effort}
        if self.max_output_tokens is not None:
            defaults["max_output_tokens"] = self.max_output_tokens
        return defaults


#: Presets for ``profile="fast" | "standard" | "deep"``; pass a Profile for anything else.
PROFILES: Mapping[str, Profile] = {
    "fast": Profile("gpt-4.1-mini", reasoning_effort=None, max_output_tokens=1024),
    "standard": Profile("gpt-5-mini", reasoning_effort="low", max_output_tokens=4096),
    "deep": Profile("gpt-5", reasoning_effort="high", max_output_tokens=16384),
}


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens, for the cost estimate in RunStats."""

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        input_rate = self.input_per_million
        cached_rate = self.cached_input_per_million
        if cached_rate is None:
            cached_rate = input_rate
        uncached = input_tokens - cached_tokens if input_tokens > cached_tokens else 0
        output = output_tokens * self.output_per_million
        return (uncached * input_rate + cached_tokens * cached_rate + output) / 1_000_000
