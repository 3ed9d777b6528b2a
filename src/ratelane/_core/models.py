"""The values that flow through a run: requests in, results and stats out."""

from __future__ import annotations

import dataclasses
import random
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson

from .frozen import quick_init

__all__ = ["ErrorInfo", "LatencySample", "Request", "Result", "RunStats", "Usage"]

SUPPORTED_PATHS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings")


@quick_init
@dataclass(frozen=True, slots=True)
class Request:
    """One request to send: a JSON body for ``path`` (relative to the API root).

    ``custom_id`` is the caller's key, echoed on the result. Left empty, it is
    assigned once where items are read: ``"request-<index>"`` with the item's
    0-based position in the input. The engine only sees assigned ids.
    """

    body: Mapping[str, Any]
    custom_id: str = ""
    path: str = "/v1/responses"
    method: str = "POST"


def _count(mapping: Any, key: str) -> int:
    value = mapping.get(key) if type(mapping) is dict else None
    return value if type(value) is int else 0


@quick_init
@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts normalised across endpoints (Responses, Chat Completions, Embeddings)."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_body(cls, body: Any) -> Usage | None:
        """Read ``usage`` from a response body of any supported endpoint, or ``None``."""
        # Bodies come from orjson, so plain dict checks suffice (and are cheaper
        # than the Mapping ABC on this per-result path).
        usage = body.get("usage") if type(body) is dict else None
        if type(usage) is not dict:
            return None
        try:  # a complete Responses usage object, the usual case: read without checks...
            input_tokens = usage["input_tokens"]
            cached = usage["input_tokens_details"]["cached_tokens"]
            output_tokens = usage["output_tokens"]
            reasoning = usage["output_tokens_details"]["reasoning_tokens"]
            total = usage["total_tokens"]
        except (KeyError, TypeError):
            pass
        else:  # ...then checked at once
            if (
                type(input_tokens) is int
                and type(cached) is int
                and type(output_tokens) is int
                and type(reasoning) is int
                and type(total) is int
                and total
            ):
                return cls(input_tokens, cached, output_tokens, reasoning, total)
        return cls._from_usage(usage)

    @classmethod
    def _from_usage(cls, usage: dict[str, Any]) -> Usage:
        """Any endpoint's usage object, each count checked (missing or not an int: 0)."""
        number = _count
        if "input_tokens" in usage:
            input_tokens = usage.get("input_tokens")
            output_tokens = usage.get("output_tokens")
            cached = number(usage.get("input_tokens_details"), "cached_tokens")
            reasoning = number(usage.get("output_tokens_details"), "reasoning_tokens")
        else:
            input_tokens = usage.get("prompt_tokens")
            output_tokens = usage.get("completion_tokens")
            cached = number(usage.get("prompt_tokens_details"), "cached_tokens")
            reasoning = number(usage.get("completion_tokens_details"), "reasoning_tokens")
        if type(input_tokens) is not int:
            input_tokens = 0
        if type(output_tokens) is not int:
            output_tokens = 0
        total = usage.get("total_tokens")
        if type(total) is not int or not total:
            total = input_tokens + output_tokens
        return cls(input_tokens, cached, output_tokens, reasoning, total)


@quick_init
@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a request failed: the server's error object, or ours for transport failures.

    ``code`` examples: ``rate_limit_exceeded``, ``invalid_api_key``,
    ``connection_error``, ``timeout``, ``invalid_json``.
    """

    code: str | None
    message: str
    type: str | None = None
    param: str | None = None


def output_text_of(body: Any) -> str:
    """Joined text of a Responses body's ``output_text`` parts, or a chat completion's
    first message content; ``""`` when there is none (like the SDK's ``output_text``)."""
    if not isinstance(body, Mapping):
        return ""
    output = body.get("output")
    if isinstance(output, list):
        parts: list[str] = []
        for item in output:
            if not isinstance(item, Mapping) or item.get("type") != "message":
                continue
            content = item.get("content")
            if not isinstance(content, list):
                continue
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "output_text":
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text)
        return "".join(parts)
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping) and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


_UNPARSED: Any = object()


@quick_init
@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one request. A failure is a Result with ``ok=False``, never an exception.

    ``raw_body`` is the exact JSON bytes the server answered on the last
    attempt (the error body on failure, when there was one); ``body`` is that
    JSON parsed on first access. Results hold bytes rather than parsed
    objects so a million of them stay compact and cost the garbage collector
    nothing. ``attempts`` counts every HTTP attempt, including a resend
    without a dropped parameter; ``latency_s`` runs from the first send to
    the final answer; ``ttft_s`` (streamed requests only) from the first send
    to the first output delta. ``request_id`` is the server's id for the last attempt,
    read from ``x-request-id`` or, behind a gateway that sends none, from the
    first proxy id header present; ``request_id_header`` names the header used.
    """

    index: int
    custom_id: str
    ok: bool
    status_code: int | None = None
    raw_body: bytes | None = field(default=None, repr=False)
    error: ErrorInfo | None = None
    request_id: str | None = None
    attempts: int = 0
    latency_s: float = 0.0
    usage: Usage | None = None
    dropped_params: tuple[str, ...] = ()
    path: str = "/v1/responses"
    request_id_header: str | None = None
    #: Answered from the response cache without sending (issue 14).
    cached: bool = False
    _parsed: Any = field(default=_UNPARSED, init=False, repr=False, compare=False)
    # Streaming (issue 12): seconds from sending to the first output delta (streamed runs only).
    ttft_s: float | None = None

    @property
    def body(self) -> Any:
        """The server's JSON answer (``None`` if there was none)."""
        parsed = self._parsed
        if parsed is _UNPARSED:
            parsed = None if self.raw_body is None else orjson.loads(self.raw_body)
            object.__setattr__(self, "_parsed", parsed)
        return parsed

    @property
    def output_text(self) -> str:
        return output_text_of(self.body)


#: Latencies kept for the percentiles: a uniform sample of at most this many.
#: 20,000 values put p99 within about a tenth of a percentile of the truth.
LATENCY_SAMPLE_SIZE = 20_000


if TYPE_CHECKING:
    from .config import Price

    _FloatArray = array[float]
else:  # array is not subscriptable at run time before Python 3.12
    _FloatArray = array


_append_to_array = array.append


class LatencySample(_FloatArray):
    """An ``array('d')`` that keeps a uniform random sample of everything appended to it.

    Reservoir sampling (Vitter's algorithm R): the first ``capacity`` values
    are kept; value number ``n`` after that replaces a random kept one with
    probability ``capacity / n``. Percentiles of the sample estimate those of
    the whole stream, and memory stays at ``capacity`` floats however long
    the run. ``seen`` counts every value appended. Only ``append`` samples:
    the engine appends one latency per result and nothing else.
    """

    __slots__ = ("_random", "capacity", "seen")

    def __new__(cls, capacity: int = LATENCY_SAMPLE_SIZE, *, seed: int = 0) -> LatencySample:
        # typeshed types array.__new__ as returning a plain array, not cls.
        return cast(LatencySample, super().__new__(cls, "d"))

    def __init__(self, capacity: int = LATENCY_SAMPLE_SIZE, *, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self._random = random.Random(seed)

    def append(self, value: float) -> None:
        self.seen += 1
        if len(self) < self.capacity:
            _append_to_array(self, value)  # array's own append: no super() per value
            return
        slot = self._random.randrange(self.seen)
        if slot < self.capacity:
            self[slot] = value


@dataclass(slots=True)
class RunStats:
    """Summary of a run, filled in as results arrive."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    attempts: int = 0
    rate_limited: int = 0
    cooldowns: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    elapsed_s: float = 0.0
    # A bounded uniform sample: memory stays flat however long the run.
    latencies_s: array[float] = field(default_factory=lambda: LatencySample(), repr=False)
    cost_usd: float | None = None
    # Streaming (issue 12): times to first token of streamed requests, a bounded sample.
    ttfts_s: array[float] = field(default_factory=lambda: LatencySample(), repr=False)
    # Operating a run (issue 14): failures that were transient (5xx, timeouts,
    # connection errors after every attempt), answers from the response cache,
    # and how many times the circuit breaker opened during the run.
    failed_transient: int = 0
    cache_hits: int = 0
    circuit_opens: int = 0

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed

    def count_usage(self, usage: Usage, price: Price | None) -> float:
        """Add one answer's tokens, and its cost when ``price`` is known; return the cost."""
        input_tokens, cached_tokens = usage.input_tokens, usage.cached_tokens
        output_tokens = usage.output_tokens
        self.input_tokens += input_tokens
        self.cached_tokens += cached_tokens
        self.output_tokens += output_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        if price is None:
            return 0.0
        cost = price.cost(input_tokens, cached_tokens, output_tokens)
        self.cost_usd = (self.cost_usd or 0.0) + cost
        return cost

    @property
    def requests_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_percentile(self, percent: float) -> float:
        """Latency at ``percent`` (0-100) by nearest rank; 0.0 with no results."""
        return _nearest_rank(self.latencies_s, percent) if self.latencies_s else 0.0

    def ttft_percentile(self, percent: float) -> float | None:
        """Time to first token at ``percent`` (0-100); ``None`` when nothing was streamed."""
        return _nearest_rank(self.ttfts_s, percent) if self.ttfts_s else None

    def as_dict(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("latencies_s", "ttfts_s")
        }
        data.update(
            completed=self.completed,
            requests_per_s=round(self.requests_per_s, 2),
            latency_p50_s=round(self.latency_percentile(50), 4),
            latency_p95_s=round(self.latency_percentile(95), 4),
            latency_p99_s=round(self.latency_percentile(99), 4),
        )
        # Streaming (issue 12): None when nothing was streamed.
        for name, percent in (("ttft_p50_s", 50), ("ttft_p95_s", 95)):
            ttft = self.ttft_percentile(percent)
            data[name] = None if ttft is None else round(ttft, 4)
        return data


def _nearest_rank(values: array[float], percent: float) -> float:
    """The value at ``percent`` (0-100) of non-empty ``values``, by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(percent / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
