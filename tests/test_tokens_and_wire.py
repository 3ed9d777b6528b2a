import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from ratelane._core.tokens import estimate_input_tokens, estimate_request_tokens, output_budget
from ratelane._http.wire import join_url, mask_key, read_rate_limit_headers


def test_input_estimate_is_ceil_of_characters_over_four() -> None:
    assert estimate_input_tokens({"input": "abcde"}) == 2
    assert estimate_input_tokens({"input": "abcd", "instructions": "abcd"}) == 2
    assert estimate_input_tokens({"model": "a-very-long-model-name", "input": ""}) == 0
    messages = {"messages": [{"role": "user", "content": "hello"}]}
    assert estimate_input_tokens(messages) == 3  # "user" + "hello" = 9 chars


def test_request_charge_adds_the_output_cap() -> None:
    body = {"input": "abcd", "max_output_tokens": 100}
    assert estimate_request_tokens(body) == 101
    assert estimate_request_tokens({"input": "abcd"}, default_output=7) == 8
    assert (
        estimate_request_tokens({"input": "abcd", "max_output_tokens": 100}, path="/v1/embeddings")
        == 1
    )
    assert output_budget({"max_tokens": 10, "n": 3}) == 30
    assert output_budget({"max_output_tokens": True}, default=5) == 5


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        ("http://h:1/v1", "/v1/responses", "http://h:1/v1/responses"),
        ("http://h:1/v1/", "/v1/responses", "http://h:1/v1/responses"),
        ("http://h:1", "/v1/responses", "http://h:1/v1/responses"),
        ("http://h:1/openai/v1", "/v1/embeddings", "http://h:1/openai/v1/embeddings"),
    ],
)
def test_join_url_never_doubles_v1(base: str, path: str, url: str) -> None:
    assert join_url(base, path) == url


def test_mask_key_hides_the_secret() -> None:
    key = "sk-proj-abcdefghijklmnop1234"
    masked = mask_key(key)
    assert masked == "sk-...1234"
    assert "abcdefghij" not in masked


def test_rate_limit_headers_are_parsed_and_tolerant() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-reset-tokens": "bogus",
    }
    parsed = read_rate_limit_headers(headers)
    assert parsed is not None
    assert parsed.limit_requests == 500
    assert parsed.limit_tokens == 30000
    assert parsed.remaining_requests == 499
    assert parsed.remaining_tokens is None
    assert parsed.reset_requests_s == pytest.approx(0.12)
    assert parsed.reset_tokens_s is None
    assert read_rate_limit_headers({"x-request-id": "req_1"}) is None


# Header sets as recorded from servers (protocol notes, sections 1 and 10).
_OPENAI = {
    "x-request-id": "req_1",
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "4000000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "3999980",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "0s",
}
_LITELLM_MODEL = {
    "x-litellm-call-id": "c1",
    "x-ratelimit-limit-requests": "300",
    "x-ratelimit-remaining-requests": "299",
    "x-ratelimit-limit-tokens": "1000000",
    "x-ratelimit-remaining-tokens": "999970",
}
_LITELLM_KEY = {
    "x-litellm-call-id": "c1",
    "x-litellm-key-spend": "0.0",
    "x-ratelimit-api_key-limit-requests": "300",
    "x-ratelimit-api_key-remaining-requests": "299",
    "x-ratelimit-api_key-limit-tokens": "100000",
    "x-ratelimit-api_key-remaining-tokens": "99970",
    "x-litellm-key-rpm-limit": "300",
    "x-litellm-key-tpm-limit": "100000",
}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(_OPENAI, (5000, 4000000, 4999, 3999980, "12ms", "0s"), id="openai"),
        pytest.param(_LITELLM_MODEL, (300, 1000000, 299, 999970, None, None), id="litellm-model"),
        pytest.param(_LITELLM_KEY, (300, 100000, 299, 99970, None, None), id="litellm-key"),
        pytest.param(
            {"x-litellm-key-rpm-limit": "120", "x-litellm-key-tpm-limit": "5000"},
            (120, 5000, None, None, None, None),
            id="litellm-key-only",
        ),
        pytest.param(
            # Model and key limits together: the smallest limit and remaining bind.
            {**_LITELLM_MODEL, **_LITELLM_KEY, "x-ratelimit-api_key-limit-requests": "200"},
            (200, 100000, 299, 99970, None, None),
            id="smallest-scope-binds",
        ),
        pytest.param(
            {
                "x-ratelimit-limit-requests": "600",
                "x-ratelimit-remaining-requests": "500",
                "x-ratelimit-team-limit-requests": "900",
                "x-ratelimit-team-remaining-requests": "3",
            },
            (600, None, 3, None, None, None),
            id="most-constraining-remaining",
        ),
        pytest.param(
            {"X-RateLimit-Limit-Requests": "60", "X-Ratelimit-End_User-Limit-Tokens": "900"},
            (60, 900, None, None, None, None),
            id="any-case-any-scope",
        ),
        pytest.param(
            {
                "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-limit-tokens_usage_based": "10",
                "x-ratelimit-remaining-tokens_usage_based": "1",
                "x-ratelimit-reset-tokens_usage_based": "1s",
                "x-ratelimit-api_key-reset-tokens": "5s",
                "x-ratelimit-limit-requests-day": "5",
            },
            (None, 30000, None, None, None, None),
            id="variants-ignored",
        ),
        pytest.param(
            {"x-ratelimit-api_key-limit-requests": "-1", "x-litellm-key-rpm-limit": "None"},
            None,
            id="unreadable-is-absent",
        ),
        pytest.param(
            {"retry-after": "60", "rate_limit_type": "requests", "x-litellm-call-id": "c"},
            None,
            id="litellm-429-announces-nothing",
        ),
    ],
)
def test_every_rate_limit_dialect_is_read(
    headers: dict[str, str], expected: tuple[object, ...] | None
) -> None:
    parsed = read_rate_limit_headers(CIMultiDictProxy(CIMultiDict(headers)))
    if expected is None:
        assert parsed is None
        return
    assert parsed is not None
    assert (
        parsed.limit_requests,
        parsed.limit_tokens,
        parsed.remaining_requests,
        parsed.remaining_tokens,
        parsed.reset_requests,
        parsed.reset_tokens,
    ) == expected
