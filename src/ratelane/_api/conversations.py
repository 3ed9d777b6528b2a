"""Multi-turn conversations: ``run_conversations([[turn, turn, ...], ...])``.

Each conversation is a chain: turn ``t`` continues turn ``t - 1``'s response
(``previous_response_id``), so the model sees the whole conversation while
only the new turn is sent. Conversations run concurrently under one rate
budget; the turns of one conversation run in order (the chain scheduler,
``ratelane._engine.chains``), and a turn that fails fails the rest of its
conversation unsent (``error.code == "parent_failed"``).

A turn is what ``run_many`` takes as an item: a prompt string, a body dict,
or a ``Request``. Its ``custom_id`` is ``"conversation-<c>-turn-<t>"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ratelane._core.items import to_request
from ratelane._core.models import Request, Result
from ratelane._engine.chains import ChainScheduler

from .blocking import run_blocking
from .client import Client

__all__ = ["arun_conversations", "conversation_turn_id", "run_conversations"]


def conversation_turn_id(conversation: int, turn: int) -> str:
    return f"conversation-{conversation}-turn-{turn}"


async def conversations_on(
    client: Client, conversations: Iterable[Sequence[Any]]
) -> list[list[Result]]:
    """Run every conversation on ``client``; results per conversation, turns in order."""
    defaults = client._options.body_defaults()
    requests: list[tuple[int, Request]] = []
    parent_of: dict[str, str] = {}
    shape: list[int] = []
    for c, turns in enumerate(conversations):
        shape.append(len(turns))
        for t, turn in enumerate(turns):
            index = len(requests)
            made = to_request(turn, index, defaults)
            custom_id = conversation_turn_id(c, t)
            requests.append((index, Request(made.body, custom_id, made.path, made.method)))
            if t:
                parent_of[custom_id] = conversation_turn_id(c, t - 1)
    run = client.engine.new_run(max_concurrency=client.max_concurrency)
    scheduler = ChainScheduler(parent_of, stats=run.stats, stopping=lambda: run.stopping)
    collected: dict[int, Result] = {}

    async def sink(result: Result) -> None:
        collected[result.index] = result

    await run.drive(scheduler.requests(iter(requests)), scheduler.sink(sink))
    results: list[list[Result]] = []
    start = 0
    for count in shape:
        results.append([collected[index] for index in range(start, start + count)])
        start += count
    return results


async def arun_conversations(
    conversations: Iterable[Sequence[Any]], **options: Any
) -> list[list[Result]]:
    """Run multi-turn conversations concurrently; a list of Results per conversation.

    ``options`` are those of ``run_many`` (``model=``, ``instructions=``,
    ``max_output_tokens=``, ``api_key=`` ...). Raises ``FatalError`` if the
    run had to stop.
    """
    async with Client(**options) as client:
        return await conversations_on(client, conversations)


def run_conversations(conversations: Iterable[Sequence[Any]], **options: Any) -> list[list[Result]]:
    """Blocking form of :func:`arun_conversations` (notebooks: a worker thread's own loop).

    ::

        chats = ratelane.run_conversations(
            [["Name a colour.", "Why that one?"], ["Pick a number.", "Double it."]],
            model="gpt-4.1-mini",
        )
        for turns in chats:
            print([turn.output_text for turn in turns])
    """
    return run_blocking(arun_conversations(conversations, **options))
