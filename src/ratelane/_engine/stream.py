"""One streamed attempt (``stream: true``) under the same governor and retry policy as any other.

The contract, from the caller's side:

- An attempt is admitted, counted and judged like a plain one; only reading
  the answer differs. A non-stream answer (a 429, a 500) is judged by
  :func:`~ratelane._engine.retry.decide` exactly as without streaming.
- A stream is complete when it ends in ``response.completed`` or
  ``response.incomplete``: the Response it carries is the attempt's answer,
  judged (and retried, when it is a failed one) by ``decide`` as if a plain
  POST had returned it. ``response.failed`` is that Response with status
  ``failed``: retried for ``server_error``-like codes, permanent otherwise.
  An ``error`` event (flat or nested shape, protocol notes 5.4) with no
  ``response.failed`` after it is judged the same way. A stream that stops
  without a terminal event (connection cut, or closed early) is a
  ``connection_error``: retried.
- A retried stream is retried whole: the request is sent again and read from
  its first event. Events already handed to the listener are never handed
  again: an event is passed on only when its ``sequence_number`` (its
  position in the stream for Chat Completions chunks) is past the last one
  passed on. Just before the first item a retried attempt passes on, the
  listener gets one ``{"type": "ratelane.retry", "attempt": n,
  "after_sequence_number": k, "error": {"code", "message"}}`` event: from there
  on the events come from a new generation of the answer (a sampling model
  may not continue the earlier text word for word); the final Response is
  always the whole answer of the attempt that succeeded.
- Terminal events (``response.completed``, ``.incomplete``, ``.failed``,
  ``error``) are never passed on: they are the attempt's outcome.
- Time to first token: from the request's first send to the first output
  delta (an event type ending in ``.delta``; for chat, a chunk with content),
  the first one of any attempt.
- Chat Completions streams (data-only chunks, ``data: [DONE]``) are put back
  together by :class:`~ratelane._engine.chat_stream.ChatAssembler`: the
  attempt's answer is the ``chat.completion`` a plain create would return
  (with usage: the request asks for ``stream_options.include_usage``); a
  chunk holding an ``error`` object fails the attempt like ``response.failed``.

Without a listener (``run_many(stream=True)``) the JSON of Responses events
is not parsed: the SSE ``event:`` name finds the first delta and the terminal
event, whose JSON alone is read (chat chunks are always parsed: they are
assembled). ``benchmarks/scenario_streaming.py`` measures what is left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ratelane._core.errors import TransportError
from ratelane._core.models import ErrorInfo, Result, RunStats
from ratelane._http.sse import SSEEvent
from ratelane._http.wire import read_rate_limit_headers

from .chat_stream import ChatAssembler
from .retry import Decision, Verdict, decide, decide_transport_error

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "RETRY_EVENT",
    "STREAMABLE_PATHS",
    "EventListener",
    "StreamState",
    "stream_attempt",
    "streamed_body",
    "with_ttft",
]

#: Receives each event (a parsed JSON dict) of a streamed request, in order.
EventListener = Callable[[dict[str, Any]], Awaitable[None]]

#: The event a listener gets before the first new item of a retried stream.
RETRY_EVENT = "ratelane.retry"

_CHAT = "/v1/chat/completions"
#: Endpoints that stream; other requests of a streamed run are sent plainly.
STREAMABLE_PATHS = frozenset({"/v1/responses", _CHAT})

_DONE_OK = frozenset({"response.completed", "response.incomplete"})
_TERMINAL = _DONE_OK | {"response.failed", "error"}
_CUT_MESSAGE = "the stream ended before its terminal event (response.completed): cut"


@dataclass(slots=True)
class StreamState:
    """One streamed request across its attempts: what the listener has seen, and when."""

    listener: EventListener | None = None
    #: Cursor (``sequence_number``) of the last event passed to the listener.
    delivered: int = -1
    #: Clock time of the first output delta of any attempt.
    first_delta_at: float | None = None
    #: Set when an attempt failed after passing events on: the retry event is owed.
    interrupted: tuple[int, ErrorInfo] | None = None

    async def deliver(self, cursor: int, event: dict[str, Any]) -> None:
        listener = self.listener
        if listener is None or cursor <= self.delivered:
            return
        await self._resume()
        self.delivered = cursor
        await listener(event)

    async def _resume(self) -> None:
        """Tell the listener once that a retried attempt takes over (see the module notes)."""
        interrupted, listener = self.interrupted, self.listener
        if interrupted is None or listener is None:
            return
        self.interrupted = None
        attempt, error = interrupted
        await listener(
            {
                "type": RETRY_EVENT,
                "attempt": attempt,
                "after_sequence_number": self.delivered,
                "error": {"code": error.code, "message": error.message},
            }
        )


def streamed_body(body: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """``body`` asking for a stream, or ``None`` when ``path`` does not stream.

    A chat body also asks for the usage chunk (``stream_options.include_usage``)
    unless it sets ``stream_options`` itself: without it a stream reports no usage.
    """
    if path not in STREAMABLE_PATHS:
        return None
    if path == _CHAT and "stream_options" not in body:
        return {**body, "stream": True, "stream_options": {"include_usage": True}}
    return {**body, "stream": True}


async def stream_attempt(
    engine: Engine,
    stream: StreamState,
    path: str,
    payload: bytes,
    body: Mapping[str, Any],
    *,
    attempt: int,
    sent_at: float,
    clock: Callable[[], float],
) -> Decision:
    """Send one streamed attempt and judge it (see the module notes); never raises for I/O."""
    governor = engine.governor
    observed = False
    final: bytes | None = None
    try:
        async with engine.transport.stream(path, payload) as reply:
            headers = reply.headers
            governor.observe(
                read_rate_limit_headers(headers),
                typical_tokens=engine.typical_tokens,
                sent_at=sent_at,
            )
            observed = True
            if reply.events is None:
                decision = decide(reply.status, headers, reply.raw, engine.policy, body)
            else:
                read = _read_chat if path == _CHAT else _read
                final = await read(reply.events, stream, clock)
                if final is None:
                    raise TransportError(_CUT_MESSAGE)
                decision = decide(200, headers, final, engine.policy, body)
    except TransportError as exc:
        if not observed:
            governor.observe(None)
        decision = decide_transport_error(exc)
    except ValueError:  # an event whose data is not JSON: the stream is unusable
        decision = decide_transport_error(TransportError("a stream event is not valid JSON"))
    if decision.verdict is Verdict.SUCCESS:
        await stream._resume()
    elif stream.delivered >= 0 and decision.error is not None:
        stream.interrupted = (attempt + 1, decision.error)
    return decision


async def _read(
    events: AsyncIterator[SSEEvent], stream: StreamState, clock: Callable[[], float]
) -> bytes | None:
    """Pass events on until the terminal one; its Response as JSON bytes (``None``: cut)."""
    parse = stream.listener is not None
    error: dict[str, Any] | None = None
    position = -1
    async for sse in events:
        if sse.is_done:
            break
        position += 1
        name = sse.event
        event: dict[str, Any] | None = None
        if parse or name is None or name in _TERMINAL:
            parsed = sse.json()
            event = parsed if isinstance(parsed, dict) else {}
            kind = event.get("type")
            name = kind if isinstance(kind, str) else name
        if name in _TERMINAL:
            assert event is not None
            if name == "error":
                error = event
                continue
            return await _drained(events, orjson.dumps(event.get("response")))
        if stream.first_delta_at is None and name is not None and name.endswith(".delta"):
            stream.first_delta_at = clock()
        if event is not None:
            number = event.get("sequence_number")
            await stream.deliver(number if type(number) is int else position, event)
    if error is not None:
        return _failed(error)
    return None


async def _read_chat(
    events: AsyncIterator[SSEEvent], stream: StreamState, clock: Callable[[], float]
) -> bytes | None:
    """Chat Completions: pass chunks on, assemble them; the completion (``None``: cut).

    Complete at ``data: [DONE]``, or when the stream closes with every choice
    finished (servers that omit ``[DONE]``). A chunk holding an ``error``
    object is a failure, judged like a failed Response.
    """
    assembler = ChatAssembler()
    position = -1
    async for sse in events:
        if sse.is_done:
            return await _drained(events, orjson.dumps(assembler.completion()))
        position += 1
        parsed = sse.json()
        chunk: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        if chunk.get("error"):
            return _failed(chunk)
        if assembler.feed(chunk) and stream.first_delta_at is None:
            stream.first_delta_at = clock()
        await stream.deliver(position, chunk)
    return orjson.dumps(assembler.completion()) if assembler.finished else None


async def _drained(events: AsyncIterator[SSEEvent], final: bytes) -> bytes:
    """``final``, once the stream has ended: what follows the terminal event (normally
    only the end of the body; a gateway's ``[DONE]``) is read, so the connection can
    go back to the pool instead of being closed."""
    async for _ in events:
        pass
    return final


def _failed(error: Mapping[str, Any]) -> bytes:
    """A failed Response holding an error event's (or error chunk's) fields, for ``decide``."""
    return orjson.dumps({"status": "failed", "error": _error_fields(error)})


def _error_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """An ``error`` event's code, message, type and param: top level first, then nested."""
    nested = event.get("error")
    inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    fields = {}
    for name in ("code", "message", "type", "param"):
        value = event.get(name)
        fields[name] = value if value is not None else inner.get(name)
    return fields


def with_ttft(result: Result, stream: StreamState, started: float, stats: RunStats) -> Result:
    """``result`` with its time to first token, counted in ``stats`` (unchanged without one)."""
    first = stream.first_delta_at
    if first is None:
        return result
    ttft = max(0.0, first - started)
    stats.ttfts_s.append(ttft)
    return dataclasses.replace(result, ttft_s=ttft)
