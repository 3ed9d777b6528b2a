import random

import orjson
import pytest

from ratelane import ConfigurationError, RetryPolicy, backoff_wait
from ratelane._core.errors import RequestTimeout, TransportError
from ratelane._core.models import ErrorInfo
from ratelane._engine.retry import (
    Verdict,
    classify,
    decide,
    decide_transport_error,
    fatal_reason,
    param_to_drop,
    params_to_drop,
    parse_retry_after,
    refuse_oversized,
)


def _error(code: str | None, message: str = "m", kind: str = "invalid_request_error", param=None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, {"status": "completed"}, Verdict.SUCCESS),
        (200, {"status": "incomplete"}, Verdict.SUCCESS),
        (
            200,
            {"status": "failed", "error": {"code": "server_error", "message": "x"}},
            Verdict.RETRY,
        ),
        (
            200,
            {"status": "failed", "error": {"code": "invalid_prompt", "message": "x"}},
            Verdict.PERMANENT,
        ),
        (408, _error(None), Verdict.RETRY),
        (409, _error(None), Verdict.RETRY),
        (500, _error("server_error", kind="server_error"), Verdict.RETRY),
        (502, None, Verdict.RETRY),
        (503, _error("server_is_overloaded"), Verdict.RETRY),
        (
            429,
            _error("rate_limit_exceeded", "Rate limit reached for m", "requests"),
            Verdict.RETRY_RATE_LIMITED,
        ),
        (
            429,
            _error("rate_limit_exceeded", "Request too large for m on tokens per min", "tokens"),
            Verdict.PERMANENT,
        ),
        (
            429,
            _error("insufficient_quota", "You exceeded your current quota", "insufficient_quota"),
            Verdict.FATAL,
        ),
        (429, _error(None, "You exceeded your current quota", "insufficient_quota"), Verdict.FATAL),
        (429, _error("credit_balance_exhausted"), Verdict.FATAL),
        (401, _error("invalid_api_key"), Verdict.FATAL),
        (400, _error("context_length_exceeded"), Verdict.PERMANENT),
        (403, _error(None), Verdict.PERMANENT),
        (404, _error("model_not_found"), Verdict.PERMANENT),
        (422, _error(None), Verdict.PERMANENT),
    ],
)
def test_classify_table(status: int, body: object, verdict: Verdict) -> None:
    assert classify(status, body).verdict is verdict


def test_x_should_retry_overrides_status_rules_but_not_fatal() -> None:
    assert classify(400, _error(None), should_retry_header="true").verdict is Verdict.RETRY
    assert classify(500, _error(None), should_retry_header="false").verdict is Verdict.PERMANENT
    assert (
        classify(401, _error("invalid_api_key"), should_retry_header="true").verdict
        is Verdict.FATAL
    )


def test_droppable_parameter_rejections() -> None:
    droppable = frozenset({"reasoning", "temperature", "top_p", "seed"})
    body = {"model": "m", "input": "x", "reasoning": {"effort": "low"}, "seed": 1}
    reasoning = _error(
        "unsupported_parameter",
        "Unsupported parameter: 'reasoning.effort' is not supported with this model.",
        param="reasoning.effort",
    )
    judged = classify(400, reasoning, request_body=body, droppable=droppable)
    assert judged.verdict is Verdict.DROP_PARAM
    seed = _error("unknown_parameter", "Unknown parameter: 'seed'.", param="seed")
    assert classify(400, seed, request_body=body, droppable=droppable).verdict is Verdict.DROP_PARAM
    # Not in the body (already dropped) or not droppable: permanent.
    temperature = _error(
        "unsupported_parameter", "Unsupported parameter: 'temperature'", param="temperature"
    )
    assert (
        classify(400, temperature, request_body=body, droppable=droppable).verdict
        is Verdict.PERMANENT
    )
    assert (
        classify(400, seed, request_body=body, droppable=frozenset()).verdict is Verdict.PERMANENT
    )
    # param missing but named in the message, as some compatible servers do
    info = ErrorInfo("unsupported_parameter", "Unsupported parameter: 'seed' is not supported.")
    assert param_to_drop(info, body, droppable) == "seed"


@pytest.mark.parametrize(
    ("ms", "seconds", "message", "expected"),
    [
        ("1500", "9", None, 1.5),
        (None, "2", None, 2.0),
        (None, "0.25", None, 0.25),
        ("bogus", "3", None, 3.0),
        (None, None, "Please try again in 644ms. Visit", 0.644),
        (None, None, "Please try again in 20s.", 20.0),
        (None, None, "Please try again in 1.54 seconds", 1.54),
        (None, "0", None, None),
        (None, "-5", None, None),
        (None, None, None, None),
        (None, "Wed, 21 Oct 2015 07:28:10 GMT", None, 10.0),
    ],
)
def test_parse_retry_after(ms, seconds, message, expected) -> None:
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    got = parse_retry_after(ms, seconds, message, now=now)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_backoff_is_full_jitter_capped_and_seeded() -> None:
    policy = RetryPolicy(initial_wait_s=0.5, max_wait_s=8.0)
    rng = random.Random(42)
    waits = [backoff_wait(policy, k, rng=rng) for k in range(12)]
    ceilings = [min(8.0, 0.5 * 2**k) for k in range(12)]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    rng_a, rng_b = random.Random(7), random.Random(7)
    assert [backoff_wait(policy, k, rng=rng_a) for k in range(20)] == [
        backoff_wait(policy, k, rng=rng_b) for k in range(20)
    ]
    many = [backoff_wait(policy, 1000, rng=rng) for _ in range(2000)]
    assert max(many) <= 8.0
    assert sum(many) / len(many) == pytest.approx(4.0, rel=0.1)


def test_server_delay_is_a_floor_and_itself_capped() -> None:
    policy = RetryPolicy(initial_wait_s=0.5, max_wait_s=8.0, max_retry_after_s=30.0)
    rng = random.Random(1)
    assert all(backoff_wait(policy, 0, server_delay_s=5.0, rng=rng) == 5.0 for _ in range(50))
    assert backoff_wait(policy, 0, server_delay_s=1000.0, rng=rng) == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_wait_s": -1},
        {"max_wait_s": float("inf")},
        {"deadline_s": 0},
        {"fatal_streak": 0},
    ],
)
def test_policy_rejects_unbounded_or_nonsense_values(kwargs) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


POLICY = RetryPolicy(initial_wait_s=0.5, max_retry_after_s=120.0)
LITELLM_TEMPERATURE = (
    "litellm.UnsupportedParamsError: gpt-5-mini doesn't support temperature=0.2. Only "
    "temperature=1 is supported. To drop unsupported params set `litellm.drop_params = True`"
)
LITELLM_TOP_P = (
    "litellm.UnsupportedParamsError: openai does not support parameters: ['top_p'], for "
    "model=gpt-5-mini. To drop these, set `litellm.drop_params=True` or for proxy:"
)
LITELLM_TWO = "litellm.UnsupportedParamsError: x does not support parameters: ['top_p', 'seed']"


def _raw(code: str | None, message: str = "m", kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps(_error(code, message, kind))


# (status, headers, raw body) -> (verdict, error code, delay_s, cooldown_s, params to drop)
@pytest.mark.parametrize(
    ("status", "headers", "raw", "expected"),
    [
        pytest.param(
            200, {}, b'{"status":"completed"}', (Verdict.SUCCESS, None, None, None, ()), id="ok"
        ),
        pytest.param(
            200,
            {},
            b'{"status":"compl',
            (Verdict.RETRY, "invalid_json", None, None, ()),
            id="truncated-200",
        ),
        pytest.param(200, {}, b"", (Verdict.RETRY, "invalid_json", None, None, ()), id="empty-200"),
        pytest.param(
            500,
            {},
            b"Internal Server Error",
            (Verdict.RETRY, "invalid_json", None, None, ()),
            id="plain-text-500",
        ),
        pytest.param(
            502,
            {"retry-after": "3"},
            b"<html>Bad gateway</html>",
            (Verdict.RETRY, "invalid_json", 3.0, None, ()),
            id="html-502-with-retry-after",
        ),
        pytest.param(
            401,
            {},
            b"Unauthorized",
            (Verdict.FATAL, "invalid_json", None, None, ()),
            id="plain-text-401",
        ),
        pytest.param(
            404,
            {},
            b"not found",
            (Verdict.PERMANENT, "invalid_json", None, None, ()),
            id="plain-text-404",
        ),
        pytest.param(
            429,
            {},
            b"slow down",
            (Verdict.RETRY_RATE_LIMITED, "invalid_json", None, 1.0, ()),
            id="plain-text-429-default-pause",
        ),
        pytest.param(
            429,
            {"retry-after-ms": "250"},
            _raw("rate_limit_exceeded", "Rate limit reached"),
            (Verdict.RETRY_RATE_LIMITED, "rate_limit_exceeded", 0.25, 0.25, ()),
            id="429-retry-after-ms",
        ),
        pytest.param(
            429,
            {},
            _raw("rate_limit_exceeded", "Please try again in 644ms."),
            (Verdict.RETRY_RATE_LIMITED, "rate_limit_exceeded", 0.644, 0.644, ()),
            id="429-try-again-in-message",
        ),
        pytest.param(
            429,
            {"llm_provider-retry-after": "60"},
            _raw("429", "litellm.RateLimitError: Model rate limit exceeded.", "throttling_error"),
            (Verdict.RETRY_RATE_LIMITED, "429", 60.0, 60.0, ()),
            id="litellm-429",
        ),
        pytest.param(
            429,
            {"retry-after": "600"},
            _raw("rate_limit_exceeded", "Rate limit reached"),
            (Verdict.PERMANENT, "rate_limit_exceeded", None, None, ()),
            id="retry-after-too-long-gives-up",
        ),
        pytest.param(
            503,
            {"retry-after": "7"},
            _raw("server_is_overloaded"),
            (Verdict.RETRY, "server_is_overloaded", 7.0, None, ()),
            id="503-retry-after",
        ),
        pytest.param(
            400,
            {},
            _raw("400", LITELLM_TEMPERATURE),
            (Verdict.DROP_PARAM, "400", None, None, ("temperature",)),
            id="litellm-temperature",
        ),
        pytest.param(
            400,
            {},
            _raw("400", LITELLM_TOP_P),
            (Verdict.DROP_PARAM, "400", None, None, ("top_p",)),
            id="litellm-top_p",
        ),
        pytest.param(
            400,
            {},
            _raw("400", LITELLM_TWO),
            (Verdict.DROP_PARAM, "400", None, None, ("top_p", "seed")),
            id="litellm-two-params",
        ),
        pytest.param(
            400,
            {},
            _raw("400", "litellm.BadRequestError: Invalid model name passed"),
            (Verdict.PERMANENT, "400", None, None, ()),
            id="litellm-unknown-model",
        ),
        pytest.param(
            400,
            {},
            orjson.dumps({"type": "no_db_connection", "message": "No connected db."}),
            (Verdict.PERMANENT, None, None, None, ()),
            id="litellm-no-db",
        ),
        pytest.param(
            401,
            {},
            _raw("invalid_api_key"),
            (Verdict.FATAL, "invalid_api_key", None, None, ()),
            id="401",
        ),
    ],
)
def test_decide_table(status: int, headers: dict[str, str], raw: bytes, expected) -> None:
    body = {"model": "m", "input": "x", "temperature": 0.2, "top_p": 0.9, "seed": 3}
    decision = decide(status, headers, raw, POLICY, body)
    code = decision.error.code if decision.error else None
    delay, pause = decision.delay_s, decision.cooldown_s
    got = (
        decision.verdict,
        code,
        None if delay is None else round(delay, 6),
        None if pause is None else round(pause, 6),
        decision.drop,
    )
    assert got == expected
    assert decision.status == status
    assert (decision.verdict is Verdict.SUCCESS) == (decision.error is None)


def test_a_body_that_is_not_json_is_kept_in_the_message() -> None:
    page = b"<html><body>" + b"upstream connect error " * 40 + b"\xff</body></html>"
    decision = decide(502, {}, page, POLICY, {})
    assert decision.error is not None
    message = decision.error.message
    assert "HTTP 502" in message and "<html><body>upstream connect error" in message
    assert len(message) < 400  # the first ~300 bytes, not the whole page
    plain = decide(500, {}, b"Internal Server Error", POLICY, {})
    assert plain.error is not None and "Internal Server Error" in plain.error.message


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-request-id": "req_1", "x-litellm-call-id": "c"}, ("req_1", "x-request-id")),
        ({"x-litellm-call-id": "abc-123"}, ("abc-123", "x-litellm-call-id")),
        ({"x-amzn-RequestId": "amz"}, ("amz", "x-amzn-requestid")),
        ({"apim-request-id": "apim"}, ("apim", "apim-request-id")),
        ({"cf-ray": "8a1b-AMS"}, ("8a1b-AMS", "cf-ray")),
        ({}, (None, None)),
    ],
)
def test_request_id_falls_back_to_proxy_headers(headers, expected) -> None:
    from multidict import CIMultiDict

    decision = decide(200, CIMultiDict(headers), b"{}", POLICY, {})
    assert (decision.request_id, decision.request_id_header) == expected


def test_transport_errors_and_oversized_requests_get_decisions_too() -> None:
    timeout = decide_transport_error(RequestTimeout("no answer"))
    assert timeout.verdict is Verdict.RETRY and timeout.error is not None
    assert timeout.error.code == "timeout"
    reset = decide_transport_error(TransportError("reset"))
    assert reset.error is not None and reset.error.code == "connection_error"
    assert refuse_oversized(100, None) is None and refuse_oversized(100, 100.0) is None
    refused = refuse_oversized(101, 100.0)
    assert refused is not None and refused.verdict is Verdict.PERMANENT
    assert refused.error is not None and "HINT" in refused.error.message


def test_reasoning_effort_is_droppable_for_chat_bodies() -> None:
    chat = {"model": "m", "messages": [], "reasoning_effort": "low"}
    error = ErrorInfo(
        "400",
        "litellm.UnsupportedParamsError: m does not support "
        "parameters: ['reasoning_effort'], for model=m.",
    )
    assert params_to_drop(error, chat, RetryPolicy().droppable_params) == ("reasoning_effort",)


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason"),
    [
        (401, "invalid_api_key", "invalid_request_error", "invalid_api_key"),
        (401, "401", "auth_error", "invalid_api_key"),  # LiteLLM: the status as the code
        (401, None, None, "invalid_api_key"),
        (429, "insufficient_quota", "insufficient_quota", "insufficient_quota"),
        (429, "429", "insufficient_quota", "insufficient_quota"),
        (429, "credit_balance_exhausted", None, "credit_balance_exhausted"),
    ],
)
def test_fatal_reason_is_symbolic_even_when_the_code_is_a_status(
    status: int, code: str | None, kind: str | None, reason: str
) -> None:
    decision = decide(status, {}, _raw(code, "no", kind), POLICY, {})
    assert decision.verdict is Verdict.FATAL
    assert fatal_reason(decision) == reason


def test_a_server_delay_past_the_cap_gives_up_and_says_how_to_wait_longer() -> None:
    raw = _raw("rate_limit_exceeded", "Rate limit reached")
    decision = decide(429, {"retry-after": "600"}, raw, POLICY, {})
    assert decision.verdict is Verdict.PERMANENT and decision.error is not None
    assert "600 s" in decision.error.message and "max_retry_after_s" in decision.error.message
    assert decision.error.code == "rate_limit_exceeded"
