"""Items become Requests in one place, with the Batch-line checks of file input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import ratelane
from ratelane import ConfigurationError, InputError, Request
from ratelane._core.items import BodyDefaults, to_request
from ratelane._files.input import validate_batch_file
from ratelane.testing import FakeOpenAI

NO_SERVER = {"api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1"}  # never reached
DEFAULTS = BodyDefaults({"model": "m"})


class Counted:
    """An iterable of prompts that counts how many items were pulled from it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    def __iter__(self) -> Iterator[str]:
        for index in range(self.count):
            self.pulled += 1
            yield f"prompt {index}"

    async def aiter(self) -> AsyncIterator[str]:
        for prompt in self:
            yield prompt


def test_no_model_anywhere_raises_after_reading_one_item() -> None:
    prompts = Counted(1_000_000)
    with pytest.raises(ConfigurationError, match=r"no model.*HINT: pass model="):
        ratelane.run_many(prompts, **NO_SERVER)
    assert prompts.pulled == 1


async def test_no_model_anywhere_raises_after_reading_one_async_item() -> None:
    prompts = Counted(1_000_000)
    with pytest.raises(ConfigurationError, match="HINT"):
        await ratelane.arun_many(prompts.aiter(), **NO_SERVER)
    assert prompts.pulled == 1
    bodies = ({"input": prompt} for prompt in Counted(10))
    with pytest.raises(ConfigurationError):
        [_ async for _ in ratelane.iter_results(bodies, **NO_SERVER)]


async def test_a_model_in_the_items_is_enough() -> None:
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            [{"model": "gpt-4.1-mini", "input": "a"}, {"input": "no model here"}],
            api_key=server.api_key,
            base_url=server.base_url,
        )
        assert server.ledger.total == 1  # the item without a model is not sent
    assert results[0].ok
    assert not results[1].ok and results[1].error is not None
    assert results[1].error.code == "invalid_request"
    assert "HINT: pass model=" in results[1].error.message
    assert results.stats.failed == 1 and results.stats.succeeded == 1


def test_an_empty_input_with_no_model_is_no_error() -> None:
    assert ratelane.run_many([], **NO_SERVER) == []


async def test_an_invalid_item_fails_with_the_message_a_file_line_gets(tmp_path: Path) -> None:
    line = '{"custom_id": "b", "method": "POST", "url": "/responses", "body": {"input": "x"}}'
    (tmp_path / "in.jsonl").write_text(f"{line}\n")
    [(_, file_message)] = validate_batch_file(tmp_path / "in.jsonl").problems
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            [
                "fine",
                {"custom_id": "b", "method": "POST", "url": "/responses", "body": {"input": "x"}},
                {"custom_id": "c", "body": ["not", "an", "object"]},
                3.5,
                "fine too",
            ],
            model="gpt-4.1-mini",
            api_key=server.api_key,
            base_url=server.base_url,
        )
        assert server.ledger.total == 2
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert [r.custom_id for r in results] == ["request-0", "b", "c", "request-3", "request-4"]
    errors = [r.error for r in results[1:4]]
    assert all(error is not None and error.code == "invalid_item" for error in errors)
    messages = [error.message for error in errors if error is not None]
    assert messages[0] == f"item 1: {file_message}"
    assert 'item 2: "body" must be a JSON object' in messages[1]
    assert messages[2].startswith("item 3: cannot send a float. HINT:")
    assert results.stats.failed == 3 and results.stats.succeeded == 2


CASES: list[tuple[str, Any, Request]] = [
    ("prompt", "hi", Request({"model": "m", "input": "hi"}, "request-4")),
    ("body", {"input": "hi"}, Request({"model": "m", "input": "hi"}, "request-4")),
    (
        "own model wins",
        {"model": "x", "input": "hi"},
        Request({"model": "x", "input": "hi"}, "request-4"),
    ),
    (
        "Request without id",
        Request({"input": "hi"}),
        Request({"model": "m", "input": "hi"}, "request-4"),
    ),
    (
        "Request with id",
        Request({"input": "hi"}, "mine"),
        Request({"model": "m", "input": "hi"}, "mine"),
    ),
    (
        "Batch item, defaults for the rest",
        {"url": "/v1/embeddings", "body": {"input": "v"}},
        Request({"model": "m", "input": "v"}, "request-4", "/v1/embeddings"),
    ),
    (
        "full Batch item",
        {"custom_id": "q", "method": "POST", "url": "/v1/responses", "body": {"input": "x"}},
        Request({"model": "m", "input": "x"}, "q"),
    ),
]


@pytest.mark.parametrize(("name", "item", "expected"), CASES, ids=[case[0] for case in CASES])
def test_to_request_assigns_defaults_and_custom_id(name: str, item: Any, expected: Request) -> None:
    assert to_request(item, 4, DEFAULTS) == expected


BAD: list[tuple[Any, str]] = [
    ({"custom_id": 7, "body": {}}, 'item 2: "custom_id" must be a string, got number 7'),
    ({"custom_id": "", "body": {}}, 'item 2: "custom_id" is empty'),
    ({"custom_id": "a", "method": "GET", "body": {}}, 'item 2: "method" is "GET", but only "POST"'),
    (
        {"custom_id": "a", "url": "/v1/files", "body": {}},
        'item 2: "url" "/v1/files" is not supported',
    ),
    (
        Request({"input": "x"}, "a", "/responses"),
        'item 2: "url" "/responses" lacks the "/v1" prefix',
    ),
    (None, "item 2: cannot send a NoneType. HINT:"),
]


@pytest.mark.parametrize(("item", "message"), BAD)
def test_invalid_items_raise_the_shared_messages(item: Any, message: str) -> None:
    with pytest.raises(InputError) as raised:
        to_request(item, 2, DEFAULTS)
    assert str(raised.value).startswith(message)
    assert raised.value.index == 2


def test_request_custom_id_is_a_plain_string() -> None:
    assert Request({"input": "x"}).custom_id == ""


async def test_a_streak_of_invalid_items_stops_the_run_early() -> None:
    pulled = 0

    def junk() -> Iterator[Any]:
        nonlocal pulled
        for number in range(1_000_000):
            pulled += 1
            yield number

    async with FakeOpenAI() as server:
        with pytest.raises(ratelane.FatalError, match="5 items in a row") as raised:
            await ratelane.arun_many(
                junk(),
                model="gpt-4.1-mini",
                retry=ratelane.RetryPolicy(fatal_streak=5),
                api_key=server.api_key,
                base_url=server.base_url,
            )
        assert server.ledger.total == 0
    assert pulled == 5
    assert raised.value.reason == "error_streak"
    assert raised.value.stats is not None and raised.value.stats.failed == 5
    assert [r.custom_id for r in raised.value.results if r] == [f"request-{i}" for i in range(5)]


async def test_valid_items_between_invalid_ones_reset_the_streak() -> None:
    items = ["ok", 1, 2, "ok", 3, 4, "ok"]
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            items,
            model="gpt-4.1-mini",
            retry=ratelane.RetryPolicy(fatal_streak=3),
            api_key=server.api_key,
            base_url=server.base_url,
        )
    assert [r.ok for r in results] == [True, False, False, True, False, False, True]
