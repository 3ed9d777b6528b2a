"""Options of the fake server: latency, faults, and everything else, validated once."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from ._batch_options import BatchOptions
from ._modes import Background, Streaming

__all__ = [
    "DEFAULT_REASONING_PREFIXES",
    "FAULT_KINDS",
    "TIER_5",
    "TIER_5_LIMITS",
    "ErrorBody",
    "FaultKind",
    "Faults",
    "Latency",
    "LimitDialect",
    "ServerOptions",
    "UnsupportedParams",
    "Window",
    "account_limits",
    "tier_5_limits",
]

FaultKind = Literal["500", "502", "503", "reset", "stall", "truncated", "quota"]
#: Every fault the server can inject, in the order the random draw tries them.
FAULT_KINDS: tuple[FaultKind, ...] = ("quota", "500", "502", "503", "reset", "stall", "truncated")

#: Model names with these prefixes answer like reasoning models (a ``reasoning`` item first).
DEFAULT_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class _Tier5(Enum):
    TIER_5 = "tier-5"

    def __repr__(self) -> str:
        return "TIER_5"


#: Default of ``rpm`` / ``tpm``: the published tier-5 limit of each model, per model.
TIER_5 = _Tier5.TIER_5

#: Published tier-5 ``(rpm, tpm)`` per model (OpenAI rate-limits page, 2026). A model
#: name matches its longest listed prefix, so snapshots (``gpt-4.1-mini-2025-04-14``)
#: get their family's limits; anything else gets ``TIER_5_LIMITS[""]``.
TIER_5_LIMITS: Mapping[str, tuple[float, float]] = {
    "": (10_000, 30_000_000),
    "gpt-5": (15_000, 40_000_000),
    "gpt-5-mini": (30_000, 180_000_000),
    "gpt-5-nano": (30_000, 180_000_000),
    "gpt-4.1": (10_000, 30_000_000),
    "gpt-4.1-mini": (30_000, 150_000_000),
    "gpt-4.1-nano": (30_000, 150_000_000),
    "gpt-4o": (10_000, 30_000_000),
    "gpt-4o-mini": (30_000, 150_000_000),
    "o1": (10_000, 30_000_000),
    "o3": (10_000, 30_000_000),
    "o3-mini": (30_000, 150_000_000),
    "o4-mini": (30_000, 150_000_000),
    "text-embedding-3-small": (10_000, 10_000_000),
    "text-embedding-3-large": (10_000, 10_000_000),
}

Limit = float | None | _Tier5
LimitDialect = Literal["openai", "litellm-key"]
Window = Literal["bucket", "fixed-minute"]
ErrorBody = Literal["json", "text"]
UnsupportedParams = Literal["openai", "litellm"]


def tier_5_limits(model: str | None) -> tuple[float, float]:
    """The tier-5 ``(rpm, tpm)`` of ``model``: its longest prefix in ``TIER_5_LIMITS``."""
    name = model or ""
    best = max((prefix for prefix in TIER_5_LIMITS if name.startswith(prefix)), key=len)
    return TIER_5_LIMITS[best]


def account_limits(rpm: Limit, tpm: Limit) -> tuple[Limit, Limit]:
    """``TIER_5`` means the whole tier-5 account only when neither limit is set:
    ``rpm=60`` alone leaves tokens unlimited (and ``rpm=None`` alone is an
    unlimited server), as before there was a tier-5 default."""
    if (rpm is TIER_5) != (tpm is TIER_5):
        return (None if rpm is TIER_5 else rpm, None if tpm is TIER_5 else tpm)
    return rpm, tpm


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_limit(name: str, value: Limit) -> None:
    """A per-minute limit is ``None`` (unlimited), ``TIER_5`` or a finite number above zero."""
    if value is None or value is TIER_5:
        return
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise ValueError(
            f"{name} must be a number > 0, None for unlimited or TIER_5, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class Latency:
    """How long a successful answer takes.

    ``seconds`` is the fixed delay, or the *median* when ``sigma`` > 0: the
    delay is then lognormal, ``seconds * exp(sigma * N(0, 1))``, drawn from the
    server's seeded generator. ``per_output_token_s`` adds a delay per output
    token, like a model that generates at a fixed speed.
    """

    seconds: float = 0.0
    sigma: float = 0.0
    per_output_token_s: float = 0.0

    def __post_init__(self) -> None:
        _check_non_negative("Latency.seconds", self.seconds)
        _check_non_negative("Latency.sigma", self.sigma)
        _check_non_negative("Latency.per_output_token_s", self.per_output_token_s)

    @property
    def is_zero(self) -> bool:
        return self.seconds == 0 and self.per_output_token_s == 0


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults injected into model requests (``POST /v1/...``), each by probability.

    One uniform number is drawn per model request from the seeded generator
    and mapped onto the probabilities in the order of ``FAULT_KINDS``, so at
    most one fault hits a request and the same seed and request order give the
    same faults. The probabilities must sum to at most 1.

    - ``quota``: 429 ``insufficient_quota`` (1.0 = the account is out of credit).
    - ``error_500`` / ``error_502`` / ``error_503``: the real error bodies.
    - ``reset``: the connection is closed without an answer (TCP reset).
    - ``stall``: the request is held ``stall_s`` seconds, then answered
      (``stall_then="answer"``) or dropped (``"drop"``).
    - ``truncated``: a 200 whose JSON is cut in half, with a ``Content-Length``
      that matches the cut, so only parsing the JSON detects it.

    Deterministic model quirks, not drawn: a model named in
    ``reject_reasoning_models`` answers 400 ``unsupported_parameter`` when the
    body has ``reasoning`` (``reasoning_effort`` for Chat Completions); one in
    ``reject_temperature_models`` does the same for ``temperature``.
    """

    quota: float = 0.0
    error_500: float = 0.0
    error_502: float = 0.0
    error_503: float = 0.0
    reset: float = 0.0
    stall: float = 0.0
    truncated: float = 0.0
    stall_s: float = 30.0
    stall_then: Literal["answer", "drop"] = "drop"
    # Any collection of names; stored as a frozenset.
    reject_reasoning_models: Collection[str] = field(default_factory=frozenset)
    reject_temperature_models: Collection[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name, value in zip(FAULT_KINDS, self.probabilities, strict=True):
            _check_probability(f"Faults probability for {name!r}", value)
        if sum(self.probabilities) > 1.0 + 1e-9:
            raise ValueError(
                f"Faults probabilities sum to {sum(self.probabilities):g}, above 1. "
                "HINT: at most one fault hits a request; lower some of them."
            )
        _check_non_negative("Faults.stall_s", self.stall_s)
        if self.stall_then not in ("answer", "drop"):
            raise ValueError(
                f"Faults.stall_then must be 'answer' or 'drop', got {self.stall_then!r}"
            )
        # Accept any collection of names, store a frozenset so the value stays hashable.
        for attribute in ("reject_reasoning_models", "reject_temperature_models"):
            names = getattr(self, attribute)
            if isinstance(names, str):
                raise TypeError(f"Faults.{attribute} must be a collection of model names")
            object.__setattr__(self, attribute, frozenset(names))

    @property
    def probabilities(self) -> tuple[float, ...]:
        """Probabilities in ``FAULT_KINDS`` order."""
        return (
            self.quota,
            self.error_500,
            self.error_502,
            self.error_503,
            self.reset,
            self.stall,
            self.truncated,
        )

    def pick(self, draw: float) -> FaultKind | None:
        """The fault for a uniform ``draw`` in [0, 1), or ``None``."""
        threshold = 0.0
        for kind, probability in zip(FAULT_KINDS, self.probabilities, strict=True):
            threshold += probability
            if draw < threshold:
                return kind
        return None

    @property
    def any_random(self) -> bool:
        return any(self.probabilities)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything :class:`FakeOpenAI` is configured with; see its docstring."""

    api_key: str = field(default="sk-test", repr=False)
    rpm: Limit = TIER_5
    tpm: Limit = TIER_5
    quantum_s: float = 1.0
    latency: Latency = field(default_factory=Latency)
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    store_limit: int = 10_000
    ledger_limit: int | None = None
    reasoning_prefixes: tuple[str, ...] = DEFAULT_REASONING_PREFIXES
    models: frozenset[str] | None = None
    embedding_dimensions: int = 16
    organization: str = "org-fake"
    clock: Callable[[], float] = time.monotonic
    rate_limit_headers: bool = True
    # -- Batch API (files and batches) --
    batches: BatchOptions = field(default_factory=BatchOptions)
    limit_dialect: LimitDialect = "openai"
    window: Window = "bucket"
    window_offset_s: float | None = None
    first_window_used: bool = False
    error_body: ErrorBody = "json"
    unsupported_params: UnsupportedParams = "openai"
    request_id_header: str = "x-request-id"
    # Long-running answers (background lifecycle, SSE streams): see ``_modes``.
    background: Background = field(default_factory=Background)
    streaming: Streaming = field(default_factory=Streaming)

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ValueError("api_key must be a non-empty string")
        check_limit("rpm", self.rpm)
        check_limit("tpm", self.tpm)
        rpm, tpm = account_limits(self.rpm, self.tpm)
        object.__setattr__(self, "rpm", rpm)
        object.__setattr__(self, "tpm", tpm)
        if not (math.isfinite(self.quantum_s) and 0 < self.quantum_s <= 60):
            raise ValueError(f"quantum_s must be in (0, 60] seconds, got {self.quantum_s!r}")
        if not isinstance(self.latency, Latency):
            raise TypeError(f"latency must be a Latency, got {type(self.latency).__name__}")
        if not isinstance(self.faults, Faults):
            raise TypeError(f"faults must be a Faults, got {type(self.faults).__name__}")
        if not isinstance(self.background, Background):
            raise TypeError(f"background must be a Background, got {self.background!r}")
        if not isinstance(self.streaming, Streaming):
            raise TypeError(f"streaming must be a Streaming, got {self.streaming!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.store_limit < 0:
            raise ValueError(f"store_limit must be >= 0, got {self.store_limit}")
        if self.ledger_limit is not None and self.ledger_limit < 0:
            raise ValueError(f"ledger_limit must be >= 0 or None, got {self.ledger_limit}")
        if not 1 <= self.embedding_dimensions <= 8192:
            raise ValueError(
                f"embedding_dimensions must be in 1..8192, got {self.embedding_dimensions}"
            )
        _check_choice("limit_dialect", self.limit_dialect, ("openai", "litellm-key"))
        _check_choice("window", self.window, ("bucket", "fixed-minute"))
        _check_choice("error_body", self.error_body, ("json", "text"))
        _check_choice("unsupported_params", self.unsupported_params, ("openai", "litellm"))
        if self.window_offset_s is not None and not 0 <= self.window_offset_s < 60:
            raise ValueError(
                f"window_offset_s must be in [0, 60) or None, got {self.window_offset_s!r}"
            )
        if not self.request_id_header or not self.request_id_header.isascii():
            raise ValueError(
                f"request_id_header must be an ASCII header name, got {self.request_id_header!r}"
            )
        object.__setattr__(self, "reasoning_prefixes", tuple(self.reasoning_prefixes))
        if not isinstance(self.batches, BatchOptions):
            raise TypeError(f"batches must be a BatchOptions, got {type(self.batches).__name__}")
        if self.models is not None:
            object.__setattr__(self, "models", frozenset(_as_names(self.models)))

    def is_reasoning_model(self, model: str) -> bool:
        return model.startswith(self.reasoning_prefixes)


def _as_names(names: Collection[str]) -> Collection[str]:
    if isinstance(names, str):
        raise TypeError("models must be a collection of model names, not a string")
    return names
