"""Streamed answers: status and headers first, then the SSE events as they arrive.

::

    async with transport.stream("/v1/responses", payload) as reply:
        if reply.events is None:      # not a stream: an error answer, read whole
            ...reply.status, reply.raw
        async for event in reply.events:
            ...                       # SSEEvent, parsed as each chunk arrives

A 200 whose ``Content-Type`` is ``text/event-stream`` is a stream
(:func:`is_event_stream`); anything else (a 429, a 500, a JSON answer from a
server that ignored ``stream``) is read whole into ``raw``, exactly like a
plain POST, so the engine judges it with the same
:func:`~ratelane._engine.retry.decide`.

``Transport.stream`` opens the connection; aiohttp errors raised while
reading events (a reset, a payload cut short, the timeout) come out
translated like every other transport error. A stream that ends cleanly but
early (no terminal event) is not an error here: what a complete stream is
belongs to the engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from .sse import SSEEvent, SSEParser

__all__ = ["StreamReply", "is_event_stream", "sse_events"]


@dataclass(frozen=True, slots=True)
class StreamReply:
    """The answer to a streamed POST: ``events`` for a stream, else ``raw`` (the whole body)."""

    status: int
    headers: CIMultiDictProxy[str]
    events: AsyncIterator[SSEEvent] | None = None
    raw: bytes = b""


def is_event_stream(status: int, content_type: str) -> bool:
    """A 200 with ``Content-Type: text/event-stream`` (parameters such as charset allowed)."""
    return status == 200 and content_type.lower().startswith("text/event-stream")


async def sse_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[SSEEvent, None]:
    """The events of a byte stream, each yielded as soon as its chunk arrives."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    parser.close()
