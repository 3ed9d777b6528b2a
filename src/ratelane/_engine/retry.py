"""What to do with an attempt's outcome, and how long to wait before the next one.

Pure functions only: the engine feeds them status codes, error bodies and
headers, and they answer with a Verdict or a number of seconds.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ratelane._core.config import RetryPolicy
from ratelane._core.models import ErrorInfo

__all__ = [
    "Verdict",
    "backoff_wait",
    "classify",
    "error_info_from_body",
    "param_to_drop",
    "parse_retry_after",
]


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    #: Like RETRY, and the whole run should pause (a 429 on rate).
    RETRY_RATE_LIMITED = "retry_rate_limited"
    #: Resend at once without the parameter the server rejected.
    DROP_PARAM = "drop_param"
    PERMANENT = "permanent"
    #: Nothing else in the run can succeed either (bad key, no quota).
    FATAL = "fatal"


_BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
    }
)
_PARAM_CODES = frozenset({"unsupported_parameter", "unsupported_value", "unknown_parameter"})
_RETRYABLE_IN_BODY = frozenset({"server_error", "rate_limit_exceeded", "server_is_overloaded"})
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s|seconds?)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    error: ErrorInfo | None = None


def error_info_from_body(status: int, body: Any) -> ErrorInfo:
    """The server's error object, tolerant of the shapes compatible servers send.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; some servers send
    ``{"object": "error", "message": ...}`` or a numeric ``code``.
    """
    inner = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(inner, Mapping):
        inner = body if isinstance(body, Mapping) else {}
    message = inner.get("message")
    code = inner.get("code")
    kind = inner.get("type")
    param = inner.get("param")
    return ErrorInfo(
        code=None if code is None else str(code),
        message=str(message) if message else f"HTTP {status}",
        type=None if kind is None else str(kind),
        param=None if param is None else str(param),
    )


def param_to_drop(
    error: ErrorInfo, body: Mapping[str, Any], droppable: frozenset[str]
) -> str | None:
    """Top-level body key to drop for a 400 that rejects a droppable parameter, else ``None``.

    ``param`` may be dotted (``reasoning.effort``): the top-level key is dropped.
    Some servers leave ``param`` empty and name it in the message
    (``Unsupported parameter: 'seed'``), so that is tried too.
    """
    if error.code not in _PARAM_CODES and not (error.message or "").lower().startswith(
        ("unsupported parameter", "unknown parameter", "unsupported value")
    ):
        return None
    candidates = []
    if error.param:
        candidates.append(error.param.split(".", 1)[0].split("[", 1)[0])
    match = re.search(r"parameter: '([^'.\[]+)", error.message or "")
    if match:
        candidates.append(match.group(1))
    for name in candidates:
        if name in droppable and name in body:
            return name
    return None


def classify(
    status: int,
    body: Any,
    *,
    should_retry_header: str | None = None,
    request_body: Mapping[str, Any] | None = None,
    droppable: frozenset[str] = frozenset(),
) -> Judgement:
    """Decide what an HTTP answer means. ``body`` is the parsed JSON (or ``None``).

    Order: billing/quota and 401 are fatal whatever else is said; then
    ``x-should-retry``; then 2xx success (a 200 whose Response ``status`` is
    ``failed`` is judged by its error code); 408/409/5xx retry; 429 retries
    unless it is "Request too large" (permanent); a 400 rejecting a droppable
    parameter drops it; every other 4xx is permanent.
    """
    if 200 <= status < 300:
        if isinstance(body, Mapping) and body.get("status") == "failed":
            failure = body.get("error")
            error = error_info_from_body(status, {"error": failure} if failure else {})
            if error.code in _BILLING_CODES:
                return Judgement(Verdict.FATAL, error)
            retryable = error.code in _RETRYABLE_IN_BODY
            return Judgement(Verdict.RETRY if retryable else Verdict.PERMANENT, error)
        return Judgement(Verdict.SUCCESS)

    error = error_info_from_body(status, body)
    if error.code in _BILLING_CODES or error.type == "insufficient_quota":
        return Judgement(Verdict.FATAL, error)
    if status == 401:
        return Judgement(Verdict.FATAL, error)
    if should_retry_header is not None:
        flag = should_retry_header.strip().lower()
        if flag == "false":
            return Judgement(Verdict.PERMANENT, error)
        if flag == "true":
            return Judgement(Verdict.RETRY_RATE_LIMITED if status == 429 else Verdict.RETRY, error)
    if status == 429:
        if (error.message or "").startswith("Request too large"):
            return Judgement(Verdict.PERMANENT, error)
        return Judgement(Verdict.RETRY_RATE_LIMITED, error)
    if status in (408, 409) or status >= 500:
        return Judgement(Verdict.RETRY, error)
    if (
        status == 400
        and request_body is not None
        and param_to_drop(error, request_body, droppable) is not None
    ):
        return Judgement(Verdict.DROP_PARAM, error)
    return Judgement(Verdict.PERMANENT, error)


def parse_retry_after(
    retry_after_ms: str | None,
    retry_after: str | None,
    message: str | None = None,
    *,
    now: float | None = None,
) -> float | None:
    """Seconds the server asked us to wait, or ``None`` if it did not say.

    ``retry-after-ms`` (float milliseconds) first, then ``retry-after`` as
    seconds (float accepted) or an HTTP-date, then the "try again in 644ms"
    hint in a 429 message. Negative, zero or non-finite values count as unsaid.
    """
    candidates: list[float | None] = []
    if retry_after_ms is not None:
        candidates.append(_float_or_none(retry_after_ms, scale=1e-3))
    if retry_after is not None:
        seconds = _float_or_none(retry_after, scale=1.0)
        if seconds is None:
            try:
                moment = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError, IndexError):
                moment = None
            if moment is not None and moment.tzinfo is not None:
                seconds = moment.timestamp() - (time.time() if now is None else now)
        candidates.append(seconds)
    if message:
        match = _TRY_AGAIN.search(message)
        if match:
            scale = 1e-3 if match.group(2).lower() == "ms" else 1.0
            candidates.append(float(match.group(1)) * scale)
    for value in candidates:
        if value is not None and math.isfinite(value) and value > 0:
            return value
    return None


def _float_or_none(text: str, *, scale: float) -> float | None:
    try:
        return float(text) * scale
    except ValueError:
        return None


def backoff_wait(
    policy: RetryPolicy,
    retry_number: int,
    *,
    server_delay_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry ``retry_number`` (0-based); see RetryPolicy's formula.

    Always within ``[0, max(max_wait_s, max_retry_after_s)]``.
    """
    ceiling = min(policy.max_wait_s, policy.initial_wait_s * 2.0 ** min(retry_number, 62))
    jittered = (rng or random).uniform(0.0, ceiling)
    if server_delay_s is None:
        return jittered
    return max(jittered, min(server_delay_s, policy.max_retry_after_s))
