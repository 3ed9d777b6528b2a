"""Streaming one request: ``Client.stream`` (async) and ``ratelane.stream`` (a plain iterator).

Both yield the parsed SSE events of one Responses request as they arrive
(dicts with ``type``, ``sequence_number``, the deltas), then, last, the final
Response (the body of ``response.completed`` or ``response.incomplete``; tell
it by ``item.get("object") == "response"``). With ``path="/v1/chat/completions"``
they yield the ``chat.completion.chunk`` dicts, then the assembled
``chat.completion``. The request is admitted by the
rate governor and retried under the RetryPolicy like any other: a stream cut
mid-way or ending in ``response.failed`` / ``error`` is sent again whole, and
the events already yielded are not yielded again; one ``ratelane.retry``
event marks where a retried attempt takes over
(``ratelane._engine.stream`` has the rules). A request that fails for good
raises :class:`~ratelane.APIError` after the events it yielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from ratelane._core.errors import APIError, FatalError
from ratelane._core.models import ErrorInfo, Request, Result
from ratelane._engine.engine import Engine, NotSent

__all__ = ["api_error", "in_thread", "stream_events"]

T = TypeVar("T")

#: Events buffered between the connection and a slow consumer; past it, reading waits.
_BUFFERED_EVENTS = 256


async def stream_events(engine: Engine, request: Request) -> AsyncIterator[dict[str, Any]]:
    """Stream ``request`` through ``engine``: its events, then its final Response."""
    events: asyncio.Queue[dict[str, Any] | Result | BaseException] = asyncio.Queue(
        maxsize=_BUFFERED_EVENTS
    )

    async def produce() -> None:
        try:
            result = await engine.execute(0, request, events=events.put)
        except NotSent:
            await events.put(FatalError("not sent: the client was stopped", reason="stopped"))
        except asyncio.CancelledError:  # the consumer left: nobody to hand anything to
            raise
        except BaseException as exc:  # handed to the consumer, raised there
            await events.put(exc)
            raise
        else:
            await events.put(result)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            item = await events.get()
            if isinstance(item, dict):
                yield item
                continue
            if isinstance(item, BaseException):
                raise item
            if not item.ok:
                raise api_error(item)
            yield item.body
            return
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


def api_error(result: Result) -> APIError:
    """The APIError of a failed Result (``Client.create``, ``Client.stream``)."""
    error = result.error or ErrorInfo(None, "request failed")
    return APIError(
        error.message,
        status_code=result.status_code,
        code=error.code,
        error_type=error.type,
        param=error.param,
        request_id=result.request_id,
        body=result.body,
    )


def in_thread(source: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """The items of an async iterator, produced on a fresh loop in a worker thread."""
    items: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
    started = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

    async def pump() -> None:
        task = asyncio.current_task()
        assert task is not None
        running.append((asyncio.get_running_loop(), task))
        started.set()
        try:
            async for item in source():
                items.put((True, item))
        except asyncio.CancelledError:
            items.put((False, None))
        except BaseException as exc:  # raised in the caller's thread
            items.put((False, exc))
        else:
            items.put((False, None))

    def iterate() -> Iterator[T]:
        thread = threading.Thread(
            target=asyncio.run, args=(pump(),), name="ratelane-stream", daemon=True
        )
        thread.start()
        try:
            while True:
                more, value = items.get()
                if more:
                    yield value
                elif value is None:
                    return
                else:
                    raise value
        finally:
            started.wait()
            loop, task = running[0]
            if thread.is_alive():
                # The loop may close meanwhile (RuntimeError): nothing left to cancel then.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)
            thread.join()

    return iterate()
