"""Background mode and chaining on the fake server, over real loopback sockets.

The lifecycle follows the server's injected clock, so each state is reached
by moving the clock, never by sleeping.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from ratelane.testing import (
    ECHO_PREFIX,
    FAILED_MARKER,
    INCOMPLETE_MARKER,
    Background,
    FakeOpenAI,
    Streaming,
)
from ratelane.testing._command import _server_from_args, add_parser

KEY = "sk-test-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def start(clock: Clock, **background: Any) -> FakeOpenAI:
    timing = {"queued_s": 1.0, "in_progress_s": 5.0, **background}
    return FakeOpenAI(api_key=KEY, clock=clock, background=Background(**timing))


async def call(
    session: aiohttp.ClientSession, server: FakeOpenAI, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.request(
        method, server.base_url + path, json=body, headers=headers
    ) as response:
        return response.status, orjson.loads(await response.read())


def create_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4.1-mini",
        "input": text,
        "background": True,
        "metadata": {"custom_id": "row-1"},
        **extra,
    }


async def test_lifecycle_queued_in_progress_completed(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    async with start(clock) as server:
        status, created = await call(session, server, "POST", "/responses", create_body())
        assert status == 200
        assert created["status"] == "queued"
        assert created["background"] is True
        assert (created["output"], created["usage"], created["completed_at"]) == ([], None, None)
        path = f"/responses/{created['id']}"
        seen = []
        for now in (1000.5, 1001.0, 1005.9, 1006.0, 1100.0):
            clock.now = now
            status, polled = await call(session, server, "GET", path)
            assert status == 200
            seen.append(polled["status"])
        assert seen == ["queued", "in_progress", "in_progress", "completed", "completed"]
        assert polled["id"] == created["id"]
        assert polled["output"][0]["content"][0]["text"] == ECHO_PREFIX + "hello"
        assert polled["usage"]["output_tokens"] > 0
        assert polled["completed_at"] is not None


async def test_create_and_polls_are_in_the_ledger_with_the_custom_id(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    async with start(clock) as server:
        _, created = await call(session, server, "POST", "/responses", create_body())
        for now in (1000.5, 1003.0, 1010.0):
            clock.now = now
            await call(session, server, "GET", f"/responses/{created['id']}")
        entries = [e for e in server.ledger.entries if e.custom_id == "row-1"]
        assert [(e.method, e.path) for e in entries] == [
            ("POST", "/v1/responses"),
            *[("GET", f"/v1/responses/{created['id']}")] * 3,
        ]
        assert [e.time_s for e in entries] == [1000.0, 1000.5, 1003.0, 1010.0]


@pytest.mark.parametrize(
    ("text", "odds", "outcome"),
    [
        (f"please {FAILED_MARKER}", {}, "failed"),
        (f"please {INCOMPLETE_MARKER}", {}, "incomplete"),
        ("plain", {"failed": 1.0}, "failed"),
        ("plain", {"incomplete": 1.0}, "incomplete"),
        ("plain", {"failed": 0.0, "incomplete": 0.0}, "completed"),
    ],
)
async def test_injected_outcomes(
    clock: Clock,
    session: aiohttp.ClientSession,
    text: str,
    odds: dict[str, float],
    outcome: str,
) -> None:
    async with start(clock, **odds) as server:
        _, created = await call(session, server, "POST", "/responses", create_body(text))
        assert created["status"] == "queued"
        clock.now += 10
        _, done = await call(session, server, "GET", f"/responses/{created['id']}")
    assert done["status"] == outcome
    full = ECHO_PREFIX + text
    if outcome == "failed":
        assert done["error"] == {
            "code": "server_error",
            "message": "The server had an error while processing your request. Sorry about that!",
        }
        assert (done["output"], done["usage"]) == ([], None)
    elif outcome == "incomplete":
        assert done["incomplete_details"] == {"reason": "max_output_tokens"}
        message = done["output"][0]
        assert message["status"] == "incomplete"
        assert message["content"][0]["text"] == full[: len(full) // 2]
        assert done["usage"] is not None
    else:
        assert (done["error"], done["incomplete_details"]) == (None, None)
        assert done["output"][0]["content"][0]["text"] == full


async def test_cancel_while_running_then_after_completion(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    async with start(clock) as server:
        _, running = await call(session, server, "POST", "/responses", create_body("a"))
        clock.now = 1002.0
        cancel = f"/responses/{running['id']}/cancel"
        status, cancelled = await call(session, server, "POST", cancel)
        assert (status, cancelled["status"], cancelled["usage"]) == (200, "cancelled", None)
        clock.now = 1100.0
        _, polled = await call(session, server, "GET", f"/responses/{running['id']}")
        assert polled["status"] == "cancelled"
        _, again = await call(session, server, "POST", cancel)
        assert again == polled  # idempotent

        _, done = await call(session, server, "POST", "/responses", create_body("b"))
        clock.now = 1200.0
        status, after = await call(session, server, "POST", f"/responses/{done['id']}/cancel")
        assert (status, after["status"]) == (200, "completed")  # too late: unchanged
        cancels = [e for e in server.ledger.entries if e.path.endswith("/cancel")]
        assert [e.custom_id for e in cancels] == ["row-1"] * 3


async def test_background_with_store_false_is_refused_uncharged(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    async with start(clock) as server:
        status, body = await call(session, server, "POST", "/responses", create_body(store=False))
        assert status == 400
        error = body["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            "store",
            "unsupported_value",
        )
        assert "Background mode requires 'store' to be true" in error["message"]
        (entry,) = server.ledger.entries
        assert (entry.status, entry.tokens, entry.error_code) == (400, 0, "unsupported_value")


async def test_chaining_onto_a_store_false_parent_is_the_real_404(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    async with start(clock) as server:
        _, parent = await call(
            session, server, "POST", "/responses", {"model": "m", "input": "x", "store": False}
        )
        status, body = await call(
            session,
            server,
            "POST",
            "/responses",
            {"model": "m", "input": "y", "previous_response_id": parent["id"]},
        )
    assert status == 404
    assert body == {
        "error": {
            "message": f"Previous response with id '{parent['id']}' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }


async def test_chaining_onto_a_finished_background_response_bills_its_history(
    clock: Clock, session: aiohttp.ClientSession
) -> None:
    async with start(clock) as server:
        _, parent = await call(session, server, "POST", "/responses", create_body("one"))
        clock.now += 10
        _, finished = await call(session, server, "GET", f"/responses/{parent['id']}")
        child_body = {"model": "m", "input": "two", "previous_response_id": parent["id"]}
        status, child = await call(session, server, "POST", "/responses", child_body)
        _, plain = await call(session, server, "POST", "/responses", {"model": "m", "input": "two"})
    assert status == 200
    assert child["previous_response_id"] == parent["id"]
    assert child["usage"]["input_tokens"] == (
        plain["usage"]["input_tokens"] + finished["usage"]["total_tokens"]
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queued_s": -1}, "Background.queued_s must be a finite number >= 0"),
        ({"in_progress_s": float("inf")}, "Background.in_progress_s must be a finite"),
        ({"failed": 1.5}, "Background.failed must be a probability"),
        ({"failed": 0.6, "incomplete": 0.6}, "HINT: at most one outcome"),
    ],
)
def test_background_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Background(**options)


def test_server_options_refuse_a_wrong_type() -> None:
    with pytest.raises(TypeError, match="background must be a Background"):
        FakeOpenAI(background={"queued_s": 1})  # type: ignore[arg-type]


def test_fake_server_command_builds_the_long_running_options() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["fake-server", "--background-queued-s", "0.5", "--background-s", "3",
         "--background-fail-rate", "0.1", "--background-incomplete-rate", "0.2",
         "--first-token-s", "0.25", "--stream-cut-rate", "0.3", "--stream-error-rate", "0.1",
         "--stream-failed-rate", "0.05"]
    )  # fmt: skip
    options = _server_from_args(args).options
    assert options.background == Background(0.5, 3.0, failed=0.1, incomplete=0.2)
    assert options.streaming == Streaming(first_token_s=0.25, cut=0.3, error=0.1, failed=0.05)
    defaults = _server_from_args(parser.parse_args(["fake-server"])).options
    assert (defaults.background, defaults.streaming) == (Background(), Streaming())
