import pytest

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
