"""A real account by default, gateway dialects (LiteLLM as measured), notebook start/stop.

Every check goes to the server over loopback; minute boundaries move on a fake clock.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from ratelane.testing import TIER_5, FakeOpenAI, Faults
from ratelane.testing._command import add_parser, limit
from ratelane.testing._config import tier_5_limits

KEY = "sk-test"
OPENAI_SIX = {
    f"x-ratelimit-{part}-{kind}"
    for part in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
}
LITELLM_KEY = {
    "x-ratelimit-api_key-limit-requests",
    "x-ratelimit-api_key-remaining-requests",
    "x-ratelimit-api_key-limit-tokens",
    "x-ratelimit-api_key-remaining-tokens",
    "x-litellm-key-rpm-limit",
    "x-litellm-key-tpm-limit",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def post(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    model: str = "gpt-4.1-mini",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> tuple[int, bytes, Any]:
    async with session.post(
        server.base_url + "/responses",
        json={"model": model, "input": "hi", "max_output_tokens": 16, **fields},
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    ) as response:
        return response.status, await response.read(), response.headers


def rate_headers(headers: Any) -> set[str]:
    return {name.lower() for name in headers if name.lower().startswith(("x-ratel", "x-litellm"))}


# -- issue 9: a real account by default ------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4.1-mini", (30_000, 150_000_000)),
        ("gpt-4.1-mini-2025-04-14", (30_000, 150_000_000)),
        ("gpt-4.1", (10_000, 30_000_000)),
        ("gpt-5-mini", (30_000, 180_000_000)),
        ("o4-mini", (30_000, 150_000_000)),
        ("my-local-model", (10_000, 30_000_000)),
        (None, (10_000, 30_000_000)),
    ],
)
def test_tier_5_table_matches_the_longest_prefix(
    model: str | None, expected: tuple[int, int]
) -> None:
    assert tier_5_limits(model) == expected


async def test_default_server_is_a_tier_5_account_per_model(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        for model, rpm in (("gpt-4.1-mini", "30000"), ("gpt-4.1", "10000"), ("x-model", "10000")):
            status, _, headers = await post(session, server, model)
            assert status == 200
            assert rate_headers(headers) == OPENAI_SIX
            assert headers["x-ratelimit-limit-requests"] == rpm
            # Each model has its own budget: one request spent on each.
            assert headers["x-ratelimit-remaining-requests"] == str(int(rpm) - 1)
        assert server.limits_for("gpt-4.1-mini") == (30_000, 150_000_000)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"rpm": None, "tpm": None}, set()),
        ({"rpm": None}, set()),
        ({"rpm": 600}, {n for n in OPENAI_SIX if n.endswith("requests")}),
        ({"tpm": 10_000}, {n for n in OPENAI_SIX if n.endswith("tokens")}),
    ],
)
async def test_explicit_limits_leave_the_rest_unlimited(
    session: aiohttp.ClientSession, options: dict[str, Any], expected: set[str]
) -> None:
    async with FakeOpenAI(api_key=KEY, **options) as server:
        status, _, headers = await post(session, server)
    assert status == 200
    assert rate_headers(headers) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (TIER_5, TIER_5)),
        (["--unlimited"], (None, None)),
        (["--rpm", "unlimited", "--tpm", "none"], (None, None)),
        (["--rpm", "600"], (600.0, None)),
        (["--rpm", "tier-5", "--tpm", "5000"], (None, 5000.0)),
    ],
)
def test_cli_limits(argv: list[str], expected: tuple[Any, Any]) -> None:
    from ratelane.testing._command import _server_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["fake-server", *argv])
    server = _server_from_args(args)
    assert (server.options.rpm, server.options.tpm) == expected


def test_cli_gateway_flags() -> None:
    from ratelane.testing._command import _server_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    argv = ["fake-server", "--limit-dialect", "litellm-key", "--window", "fixed-minute",
            "--window-offset-s", "30", "--first-window-used", "--error-body", "text",
            "--unsupported-params", "litellm",
            "--request-id-header", "x-litellm-call-id"]  # fmt: skip
    options = _server_from_args(parser.parse_args(argv)).options
    assert (options.limit_dialect, options.window, options.window_offset_s) == (
        "litellm-key",
        "fixed-minute",
        30.0,
    )
    assert options.first_window_used
    assert (options.error_body, options.unsupported_params) == ("text", "litellm")
    assert options.request_id_header == "x-litellm-call-id"


def test_cli_limit_refuses_nonsense() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unlimited"):
        limit("lots")


# -- issue 10: gateway dialects ---------------------------------------------------------


async def test_litellm_key_dialect_headers_and_429(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, rpm=60, tpm=100_000, limit_dialect="litellm-key") as server:
        status, _, headers = await post(session, server)
        assert status == 200
        assert rate_headers(headers) == LITELLM_KEY
        assert headers["x-ratelimit-api_key-limit-requests"] == "60"
        assert headers["x-ratelimit-api_key-remaining-requests"] == "59"
        assert headers["x-litellm-key-tpm-limit"] == "100000"
        status, raw, headers = await post(session, server)
    assert status == 429
    error = orjson.loads(raw)["error"]
    assert error["code"] == "429"
    assert error["type"] == "throttling_error"
    assert "RPM limit=60" in error["message"]
    assert headers["retry-after"] == "1"
    assert headers["rate_limit_type"] == "requests"
    assert "retry-after-ms" not in headers
    assert not rate_headers(headers) & OPENAI_SIX


async def test_fixed_minute_window_refuses_until_the_minute_turns(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    async with FakeOpenAI(
        api_key=KEY, rpm=3, clock=clock, window="fixed-minute", window_offset_s=50.0
    ) as server:
        # A fixed window admits a burst of the whole minute's budget at once...
        assert [(await post(session, server))[0] for _ in range(3)] == [200, 200, 200]
        status, _, headers = await post(session, server)
        assert status == 429
        assert headers["retry-after"] == "10"  # ... then nothing until the minute turns
        clock.now += 9.5
        assert (await post(session, server))[0] == 429
        clock.now += 0.5
        status, _, headers = await post(session, server)
        assert status == 200
        assert headers["x-ratelimit-remaining-requests"] == "2"
        assert headers["x-ratelimit-reset-requests"] == "1m0s"


async def test_first_window_used_answers_only_429_until_it_turns(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    async with FakeOpenAI(
        api_key=KEY,
        rpm=1200,
        clock=clock,
        window="fixed-minute",
        window_offset_s=57.0,
        first_window_used=True,
        rate_limit_headers=False,
    ) as server:
        statuses = [(await post(session, server))[0] for _ in range(20)]
        assert statuses == [429] * 20
        clock.now += 3.0
        statuses = [(await post(session, server))[0] for _ in range(20)]
        assert statuses == [200] * 20
        _, _, headers = await post(session, server)
        assert not rate_headers(headers)
        server.set_limits(tpm=1_000_000)  # a later limit does not start used up
        assert (await post(session, server))[0] == 200


async def test_plain_text_error_bodies(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, error_body="text") as server:
        status, raw, headers = await post(session, server, headers={"x-fake-fault": "500"})
        assert status == 500
        assert headers["Content-Type"].startswith("text/plain")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        assert b"server had an error" in raw
        status, raw, _ = await post(session, server)
    assert status == 200
    assert orjson.loads(raw)["object"] == "response"


@pytest.mark.parametrize(
    ("field", "value", "wording"),
    [
        ("temperature", 0.2, "UnsupportedParamsError: m1 doesn't support temperature=0.2"),
        ("reasoning", {"effort": "low"}, "m1 does not support parameters: ['reasoning']"),
    ],
)
async def test_litellm_unsupported_params_wording(
    session: aiohttp.ClientSession, field: str, value: Any, wording: str
) -> None:
    faults = Faults(reject_temperature_models={"m1"}, reject_reasoning_models={"m1"})
    async with FakeOpenAI(api_key=KEY, faults=faults, unsupported_params="litellm") as server:
        status, raw, _ = await post(session, server, "m1", **{field: value})
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert (error["code"], error["param"]) == ("400", None)
    assert wording in error["message"]
    assert error["message"].startswith("litellm.UnsupportedParamsError: ")


async def test_request_id_in_another_header(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, request_id_header="x-litellm-call-id") as server:
        _, _, headers = await post(session, server)
        assert "x-request-id" not in headers
        assert server.ledger.entries[-1].request_id == headers["x-litellm-call-id"]


def test_dialect_options_are_checked() -> None:
    with pytest.raises(ValueError, match="limit_dialect"):
        FakeOpenAI(limit_dialect="azure")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_offset_s"):
        FakeOpenAI(window="fixed-minute", window_offset_s=60.0)


# -- issue 14: a server that outlives a notebook cell ----------------------------------------


def _status(server: FakeOpenAI) -> int:
    request = urllib.request.Request(
        server.base_url + "/responses",
        data=b'{"model": "gpt-4.1-mini", "input": "cell"}',
        headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_start_in_thread_survives_gc_between_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    monkeypatch.setattr(atexit, "unregister", hooks.remove)
    namespace: dict[str, Any] = {}
    # Cell 1: start, keep only the object (no context manager to be collected).
    cell = "server = FakeOpenAI(api_key='sk-nb').start_in_thread()"
    exec(cell, {"FakeOpenAI": FakeOpenAI}, namespace)
    gc.collect()
    # Cell 2: still serving.
    server: FakeOpenAI = namespace["server"]
    assert _status(server) == 200
    assert hooks == [server.stop]  # atexit cleanup is registered
    port = server.port
    server.stop()
    server.stop()  # idempotent
    assert hooks == []
    with socket.socket() as probe:
        probe.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    # And it can start again.
    server.start_in_thread()
    try:
        assert _status(server) == 200
    finally:
        server.stop()
