import random

import pytest

from ratelane import ConfigurationError, RetryPolicy, backoff_wait
from ratelane._core.models import ErrorInfo
from ratelane._engine.retry import Verdict, classify, param_to_drop, parse_retry_after


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
