"""Every retry decision, in one place: what an attempt's outcome means and how long to wait.

The engine sends, then asks :func:`decide` (an HTTP answer) or
:func:`decide_transport_error` (no answer) for one :class:`Decision`, and acts
on it: hand back the Result, resend, resend without a parameter, pause the
run, or stop it. How retries are bounded and spaced (attempts, deadline, a
fatal stop, backoff with the server's delay as a floor, no wait after a
dropped parameter) is the tenacity object :func:`retrying` builds. Pure
functions only, tested table-driven; nothing here sleeps or keeps state.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from ratelane._core.config import RetryPolicy
from ratelane._core.errors import RequestTimeout, TransportError
from ratelane._core.models import ErrorInfo
from ratelane._http.wire import request_id_of

__all__ = [
    "Decision",
    "Verdict",
    "backoff_wait",
    "classify",
    "decide",
    "decide_transport_error",
    "error_info_from_body",
    "fatal_reason",
    "param_to_drop",
    "parse_retry_after",
    "refuse_oversized",
    "retrying",
]

#: How much of a body that is not JSON (a plain-text 500, an HTML 502) an error keeps.
BODY_SNIPPET_BYTES = 300


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    #: Like RETRY, and the whole run should pause (a 429 on rate).
    RETRY_RATE_LIMITED = "retry_rate_limited"
    #: Resend at once without the parameter(s) the server rejected.
    DROP_PARAM = "drop_param"
    PERMANENT = "permanent"
    #: Nothing else in the run can succeed either (bad key, no quota).
    FATAL = "fatal"


_RETRYING = frozenset({Verdict.RETRY, Verdict.RETRY_RATE_LIMITED, Verdict.DROP_PARAM})

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
_RETRYABLE_IN_BODY = frozenset({"server_error", "server_is_overloaded"})
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s|seconds?)\b", re.IGNORECASE)


@dataclass(slots=True)  # built once per answer: plain slots (frozen costs 3x)
class Decision:
    """What one attempt produced and what to do about it.

    ``delay_s``: the wait the server asked for (a floor for the backoff);
    ``cooldown_s``: how long the whole run pauses (only for RETRY_RATE_LIMITED);
    ``drop``: the body parameters to remove before resending (DROP_PARAM);
    ``body``: the parsed JSON answer, ``raw`` its bytes; ``request_id`` and the
    header it came from (``request_id_header``).
    """

    verdict: Verdict
    error: ErrorInfo | None = None
    status: int | None = None
    body: Any = None
    raw: bytes | None = None
    delay_s: float | None = None
    cooldown_s: float | None = None
    drop: tuple[str, ...] = ()
    request_id: str | None = None
    request_id_header: str | None = None

    @property
    def retries(self) -> bool:
        """Whether another attempt could succeed (retry, pause-and-retry, drop-and-resend)."""
        return self.verdict in _RETRYING


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


#: How servers name a rejected parameter in an error message, one rule a wording;
#: each pattern's group 1 holds the name, or a list of quoted names.
_PARAM_WORDINGS: tuple[re.Pattern[str], ...] = (
    # OpenAI: "Unsupported parameter: 'seed' is not supported with this model."
    re.compile(r"parameter: '([^'.\[]+)"),
    # LiteLLM: "litellm.UnsupportedParamsError: gpt-5-mini doesn't support temperature=0.2..."
    re.compile(r"(?:doesn't|does not) support (\w+)="),
    # LiteLLM: "... openai does not support parameters: ['top_p', 'seed'], for model=..."
    re.compile(r"(?:doesn't|does not) support parameters?: \[([^\]]*)\]"),
)
_PARAM_MESSAGE_STARTS = ("unsupported parameter", "unknown parameter", "unsupported value")
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


def _rejects_a_parameter(error: ErrorInfo) -> bool:
    if error.code in _PARAM_CODES:
        return True
    message = error.message or ""
    return message.lower().startswith(_PARAM_MESSAGE_STARTS) or "UnsupportedParamsError" in message


def params_to_drop(
    error: ErrorInfo, body: Mapping[str, Any], droppable: frozenset[str]
) -> tuple[str, ...]:
    """Top-level body keys to drop for a 400 that rejects droppable parameters, else ``()``.

    ``param`` may be dotted (``reasoning.effort``): the top-level key is dropped.
    Servers that leave ``param`` empty name it in the message; the wordings
    known are in ``_PARAM_WORDINGS`` (OpenAI's and LiteLLM's).
    """
    if not _rejects_a_parameter(error):
        return ()
    candidates: list[str] = []
    if error.param:
        candidates.append(error.param.split(".", 1)[0].split("[", 1)[0])
    message = error.message or ""
    for pattern in _PARAM_WORDINGS:
        for match in pattern.finditer(message):
            named = match.group(1)
            quoted = _QUOTED.findall(named)
            candidates.extend(quoted or [named])
    names = [
        name.split(".", 1)[0]
        for name in dict.fromkeys(candidates)
        if name.split(".", 1)[0] in droppable and name.split(".", 1)[0] in body
    ]
    return tuple(dict.fromkeys(names))


def param_to_drop(
    error: ErrorInfo, body: Mapping[str, Any], droppable: frozenset[str]
) -> str | None:
    """The first of :func:`params_to_drop`, or ``None``."""
    names = params_to_drop(error, body, droppable)
    return names[0] if names else None


def classify(
    status: int,
    body: Any,
    *,
    should_retry_header: str | None = None,
    request_body: Mapping[str, Any] | None = None,
    droppable: frozenset[str] = frozenset(),
) -> Decision:
    """Decide what an HTTP answer means. ``body`` is the parsed JSON (or ``None``).

    Order: billing/quota and 401 are fatal whatever else is said; then
    ``x-should-retry``; then 2xx success (a 200 whose Response ``status`` is
    ``failed`` is judged by its error code, ``rate_limit_exceeded`` as a 429);
    408/409/5xx retry; 429 retries unless it is "Request too large" (permanent);
    a 400 rejecting a droppable parameter drops it; every other 4xx is permanent.
    The answer carries the verdict, the error and the parameters to drop;
    :func:`decide` adds the rest.
    """
    if 200 <= status < 300:
        if isinstance(body, Mapping) and body.get("status") == "failed":
            failure = body.get("error")
            error = error_info_from_body(status, {"error": failure} if failure else {})
            if error.code in _BILLING_CODES:
                return Decision(Verdict.FATAL, error)
            if error.code == "rate_limit_exceeded":  # e.g. an error event mid-stream
                return Decision(Verdict.RETRY_RATE_LIMITED, error)  # a 429 by another name
            retryable = error.code in _RETRYABLE_IN_BODY
            return Decision(Verdict.RETRY if retryable else Verdict.PERMANENT, error)
        return Decision(Verdict.SUCCESS)

    error = error_info_from_body(status, body)
    if error.code in _BILLING_CODES or error.type == "insufficient_quota":
        return Decision(Verdict.FATAL, error)
    if status == 401:
        return Decision(Verdict.FATAL, error)
    if should_retry_header is not None:
        flag = should_retry_header.strip().lower()
        if flag == "false":
            return Decision(Verdict.PERMANENT, error)
        if flag == "true":
            return Decision(Verdict.RETRY_RATE_LIMITED if status == 429 else Verdict.RETRY, error)
    if status == 429:
        if (error.message or "").startswith("Request too large"):
            return Decision(Verdict.PERMANENT, error)
        return Decision(Verdict.RETRY_RATE_LIMITED, error)
    if status in (408, 409) or status >= 500:
        return Decision(Verdict.RETRY, error)
    if status == 400 and request_body is not None:
        drop = params_to_drop(error, request_body, droppable)
        if drop:
            return Decision(Verdict.DROP_PARAM, error, drop=drop)
    return Decision(Verdict.PERMANENT, error)


def decide(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    policy: RetryPolicy,
    request_body: Mapping[str, Any],
) -> Decision:
    """The one Decision for an HTTP answer: status, headers and raw body, under ``policy``.

    - a 2xx with a JSON body that is not a failed Response: SUCCESS (the cheap path);
    - a 2xx with an empty or non-JSON body (a truncated answer): RETRY;
    - an error body that is not JSON: judged by status alone, its first
      BODY_SNIPPET_BYTES kept in the message;
    - otherwise :func:`classify`; then for retries the server's delay
      (``retry-after-ms``, ``retry-after``, LiteLLM's ``llm_provider-retry-after``,
      a 429's "try again in"): above ``policy.max_retry_after_s`` the request is
      given up (PERMANENT); a 429 pauses the run for that delay, or
      ``2 * initial_wait_s`` when none was given.
    """
    found = request_id_of(headers)
    header, request_id = found if found is not None else (None, None)
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        if 200 <= status < 300:
            message = f"HTTP {status} with a body that is not valid JSON (truncated?)"
        else:
            text = raw[:BODY_SNIPPET_BYTES].decode("utf-8", "replace")
            message = f"HTTP {status} with a body that is not JSON: {text!r}"
        judged = Decision(Verdict.RETRY, ErrorInfo("invalid_json", message))
        if not 200 <= status < 300:
            verdict = classify(status, None).verdict
            judged = replace(judged, verdict=verdict)
        return _with_delay(judged, status, headers, None, raw, policy, request_id, header)
    if 200 <= status < 300:
        if body is None:
            error = ErrorInfo("invalid_json", f"HTTP {status} with an empty body")
            return Decision(
                Verdict.RETRY, error, status, None, None, None, None, (), request_id, header
            )
        if type(body) is not dict or body.get("status") != "failed":
            return Decision(
                Verdict.SUCCESS, None, status, body, raw, None, None, (), request_id, header
            )
    judged = classify(
        status,
        body,
        should_retry_header=headers.get("x-should-retry"),
        request_body=request_body,
        droppable=policy.droppable_params,
    )
    return _with_delay(judged, status, headers, body, raw or None, policy, request_id, header)


def _with_delay(
    judged: Decision,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    raw: bytes | None,
    policy: RetryPolicy,
    request_id: str | None,
    header: str | None,
) -> Decision:
    verdict = judged.verdict
    error = judged.error or ErrorInfo(None, f"HTTP {status}")
    delay = cooldown = None
    if verdict is Verdict.RETRY or verdict is Verdict.RETRY_RATE_LIMITED:
        delay = parse_retry_after(
            headers.get("retry-after-ms"),
            headers.get("retry-after") or headers.get("llm_provider-retry-after"),
            error.message if verdict is Verdict.RETRY_RATE_LIMITED else None,
        )
        if delay is not None and delay > policy.max_retry_after_s:
            message = (
                f"{error.message} (the server asked to wait {delay:g} s, more than "
                f"max_retry_after_s={policy.max_retry_after_s:g}: given up. HINT: raise "
                "RetryPolicy.max_retry_after_s to wait that long)"
            )
            error = replace(error, message=message)
            verdict, delay = Verdict.PERMANENT, None
        elif verdict is Verdict.RETRY_RATE_LIMITED:
            cooldown = delay if delay is not None else 2 * policy.initial_wait_s
    return Decision(
        verdict, error, status, body, raw, delay, cooldown, judged.drop, request_id, header
    )


def fatal_reason(decision: Decision) -> str:
    """Why a FATAL decision stops the run, as a symbolic code (``invalid_api_key``, ...).

    The server's ``code`` when it is symbolic; gateways such as LiteLLM send
    the HTTP status as the code (``"401"``), and a plain-text body has no code
    at all, so then the reason comes from the status (401: ``invalid_api_key``)
    or the error type (``insufficient_quota``).
    """
    error = decision.error
    code = error.code if error is not None else None
    if code and not code.isdigit() and code != "invalid_json":
        return code
    if decision.status == 401:
        return "invalid_api_key"
    if error is not None and error.type == "insufficient_quota":
        return "insufficient_quota"
    return f"http_{decision.status}"


def decide_transport_error(exc: TransportError) -> Decision:
    """No usable answer (refused, reset, truncated, timed out): always worth a retry."""
    code = "timeout" if isinstance(exc, RequestTimeout) else "connection_error"
    return Decision(Verdict.RETRY, ErrorInfo(code, str(exc)))


def refuse_oversized(charge: int, token_limit: float | None) -> Decision | None:
    """PERMANENT before sending when one request needs more tokens than a whole minute allows.

    The server would answer "Request too large", and no wait ever helps.
    """
    if token_limit is None or charge <= token_limit:
        return None
    message = (
        f"request needs about {charge} tokens (input estimate plus output cap), more "
        f"than the whole tokens-per-minute limit of {token_limit:.0f}. HINT: lower "
        "max_output_tokens or shorten the input"
    )
    return Decision(Verdict.PERMANENT, ErrorInfo("request_too_large", message))


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


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
    stopped: Callable[[], bool],
    forgiven: Callable[[], int] | None = None,
) -> AsyncRetrying:
    """The tenacity loop for one request whose first Decision asked for a retry.

    Stops when ``stopped()`` (the run hit a fatal error), after
    ``policy.max_attempts`` attempts, or when the next wait would end past
    ``policy.deadline_s`` from the first attempt. Waits :func:`backoff_wait`
    with the server's delay as a floor, and nothing after a dropped parameter.
    Returns the last Decision instead of raising when it gives up.
    ``forgiven()`` counts attempts that do not count against ``max_attempts``
    (failures the circuit breaker blamed on an outage).
    """
    give_up_after = stop_after_attempt(policy.max_attempts)

    def stop(state: RetryCallState) -> bool:
        if forgiven is not None:
            if stopped() or state.attempt_number - forgiven() >= policy.max_attempts:
                return True
        elif stopped() or give_up_after(state):
            return True
        if policy.deadline_s is None:
            return False
        upcoming = state.upcoming_sleep or 0.0
        return (state.seconds_since_start or 0.0) + upcoming > policy.deadline_s

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        decision = outcome.result() if outcome is not None and not outcome.failed else None
        if decision is not None and decision.verdict is Verdict.DROP_PARAM:
            return 0.0
        delay = decision.delay_s if decision is not None else None
        return backoff_wait(policy, state.attempt_number - 1, server_delay_s=delay, rng=rng)

    return AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_result(_wants_retry),
        sleep=sleep,
        retry_error_callback=_last_outcome,
        reraise=True,
    )


def _wants_retry(decision: Decision) -> bool:
    return decision.verdict in _RETRYING


def _last_outcome(state: RetryCallState) -> Decision:
    outcome = state.outcome
    assert outcome is not None
    decision: Decision = outcome.result()
    return decision
