"""Chains and background mode from Python: run_conversations, Client.create(previous=...),
run_many(background=True, journal=...), against the fake server over real sockets."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import ratelane
from ratelane import Client, ConfigurationError
from ratelane.testing import FAILED_MARKER, Background, FakeOpenAI, Latency

MODEL = "gpt-4.1-mini"


async def test_run_conversations_continues_each_turn_from_the_last() -> None:
    async with FakeOpenAI(latency=Latency(0.0)) as server:
        chats = await ratelane.arun_conversations(
            [["Name a colour.", "Why that one?", "And its opposite?"], ["Pick a number."]] * 20,
            model=MODEL,
            api_key=server.api_key,
            base_url=server.base_url,
        )
    assert [len(turns) for turns in chats] == [3, 1] * 20
    for c, turns in enumerate(chats):
        assert all(turn.ok for turn in turns)
        assert [turn.custom_id for turn in turns] == [
            f"conversation-{c}-turn-{t}" for t in range(len(turns))
        ]
        previous = None
        for turn in turns:
            assert turn.body["previous_response_id"] == previous
            previous = turn.body["id"]


async def test_a_failed_turn_fails_the_rest_of_its_conversation_unsent() -> None:
    async with FakeOpenAI(latency=Latency(0.0), background=Background(failed=0.0)) as server:
        chats = await ratelane.arun_conversations(
            [["fine", {"input": "x", "max_output_tokens": 1}, "never sent"], ["fine", "fine"]],
            model=MODEL,
            api_key=server.api_key,
            base_url=server.base_url,
        )
        sent = server.ledger.total
    first, second = chats
    assert [turn.ok for turn in first] == [True, False, False]
    assert first[2].error is not None and first[2].error.code == "parent_failed"
    assert '"conversation-0-turn-1"' in first[2].error.message
    assert all(turn.ok for turn in second)
    assert sent == 4  # the third turn of the first conversation was never sent


async def test_client_create_previous_continues_a_result() -> None:
    async with FakeOpenAI(latency=Latency(0.0)) as server:
        async with Client(model=MODEL, api_key=server.api_key, base_url=server.base_url) as client:
            first = await client.create({"input": "Name a colour."})
            second = await client.create({"input": "Why?"}, previous=first)
            third = await client.create({"input": "And?"}, previous=second.body["id"])
            with pytest.raises(ConfigurationError, match="no response id"):
                await client.create({"input": "x"}, previous="")
    assert second.body["previous_response_id"] == first.body["id"]
    assert third.body["previous_response_id"] == second.body["id"]


def test_run_many_background_polls_and_journals(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    fake = FakeOpenAI(latency=Latency(0.0), background=Background(queued_s=0.0, in_progress_s=0.1))
    with fake.run_in_thread() as server:
        results = ratelane.run_many(
            ["one", "two", f"three {FAILED_MARKER}"],
            model=MODEL,
            api_key=server.api_key,
            base_url=server.base_url,
            background=True,
            journal=journal,
        )
        polls = sum(1 for entry in server.ledger.entries if entry.method == "GET")
    assert [result.ok for result in results] == [True, True, False]
    assert results[0].body["status"] == "completed" and results[0].body["background"] is True
    assert results[0].output_text
    assert results[2].error is not None and results[2].error.code == "server_error"
    assert polls == 3  # one poll each: done by the first poll, a second after the create
    lines = [orjson.loads(raw) for raw in journal.read_bytes().splitlines()]
    created = {line["custom_id"]: line["id"] for line in lines if line["id"]}
    assert created == {f"request-{i}": results[i].body["id"] for i in range(3)}
    assert lines[-1] == {"custom_id": "request-2", "id": None}  # the failed one, forgotten


def test_run_many_refuses_a_chained_item_instead_of_sending_it_unchained() -> None:
    item = {"custom_id": "b", "previous_custom_id": "a", "body": {"input": "x"}}
    with FakeOpenAI(latency=Latency(0.0)).run_in_thread() as server:
        (result,) = ratelane.run_many(
            [item], model=MODEL, api_key=server.api_key, base_url=server.base_url
        )
        assert server.ledger.total == 0
    assert not result.ok and result.error is not None
    assert "run_conversations" in result.error.message
