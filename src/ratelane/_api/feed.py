"""Reading a call's items into Requests, and the one place ``_api`` runs the engine.

Every item is converted once, here: defaults applied, ``custom_id`` assigned.
An item that is not a request becomes a failed Result handed straight to the
sink (before the next engine result), so the engine only ever sees Requests.
A call with no model anywhere (no ``model=``, no profile, none in the first
item) raises ``ConfigurationError`` after reading exactly one item.
"""

from __future__ import annotations

from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from itertools import chain
from typing import Any

from ratelane._core.batch_line import default_custom_id, valid_custom_id
from ratelane._core.errors import ConfigurationError, FatalError, InputError
from ratelane._core.items import NO_MODEL_MESSAGE, BodyDefaults, to_request
from ratelane._core.models import ErrorInfo, Request, Result, RunStats
from ratelane._engine.engine import Engine

from .background import BackgroundOption

__all__ = ["Items", "Sink", "run_items"]

Items = Iterable[Any] | AsyncIterable[Any]
Sink = Callable[[Result], Awaitable[None]]
_Numbered = tuple[int, Request]
_END: Any = object()


async def _drive(
    engine: Engine,
    requests: Iterator[_Numbered] | AsyncIterator[_Numbered],
    sink: Sink,
    max_concurrency: int,
    stream: bool = False,
    background: BackgroundOption | None = None,
) -> RunStats:
    """The engine call of every run ``_api`` makes, in one place.

    (``Client`` also builds the Engine and sends ``Client.create`` through
    ``Engine.execute``.)
    """
    run = engine.new_run(max_concurrency=max_concurrency, stream=stream)
    if background is None:
        return await run.drive(requests, sink)
    close = background.attach(run)  # background mode (issue 12)
    try:
        return await run.drive(requests, sink)
    finally:
        close()


class _Reader:
    """Converts items one at a time; keeps the failed Results of invalid ones.

    ``fatal_streak`` invalid items in a row failing the same way (the
    RetryPolicy's limit for identical permanent errors) end the reading and set
    ``fatal``: a million junk items give that many failed Results, not a
    million, and the pending ones stay bounded.
    """

    __slots__ = ("defaults", "failed", "fatal", "fatal_streak", "pending", "streak", "streak_code")

    def __init__(self, defaults: BodyDefaults, fatal_streak: int) -> None:
        self.defaults = defaults
        self.fatal_streak = fatal_streak
        self.pending: deque[Result] = deque()
        self.failed = 0
        self.streak = 0
        self.streak_code = ""
        self.fatal: str | None = None

    def convert(self, index: int, item: Any) -> Request | None:
        try:
            request = to_request(item, index, self.defaults)
        except InputError as exc:
            custom_id = item.custom_id if isinstance(item, Request) else valid_custom_id(item)
            self._fail(index, custom_id or default_custom_id(index), "invalid_item", str(exc))
            return None
        if self.defaults.model is None and not isinstance(request.body.get("model"), str):
            self._fail(index, request.custom_id, "invalid_request", NO_MODEL_MESSAGE, request.path)
            return None
        self.streak = 0
        return request

    def _fail(
        self, index: int, custom_id: str, code: str, message: str, path: str = "/v1/responses"
    ) -> None:
        self.failed += 1
        self.pending.append(
            Result(index, custom_id, ok=False, error=ErrorInfo(code, message), path=path)
        )
        self.streak = self.streak + 1 if code == self.streak_code else 1
        self.streak_code = code
        if self.streak >= self.fatal_streak:
            self.fatal = (
                f"{self.streak} items in a row were not valid requests; the last: {message}"
            )

    def check_first(self, first: Any) -> None:
        """Raise when the first item (and so the call) can name no model."""
        if first is _END or self.defaults.model is not None:
            return
        if self._converted_without_model(first):
            raise ConfigurationError(
                "no model: neither model=, a profile, nor the first item names one, so no "
                "request could be sent. HINT: pass model='gpt-4.1-mini' (or profile='fast'), "
                "or put 'model' in every body"
            )

    def _converted_without_model(self, first: Any) -> bool:
        try:
            request = to_request(first, 0, self.defaults)
        except InputError:
            return False  # not a request at all: that item's own failure says so
        return not isinstance(request.body.get("model"), str)


def _iterate(items: Iterator[Any], reader: _Reader) -> Iterator[_Numbered]:
    convert = reader.convert
    for index, item in enumerate(items):
        request = convert(index, item)
        if request is not None:
            yield index, request
        elif reader.fatal is not None:
            return


async def _aiterate(
    first: Any, rest: AsyncIterator[Any], reader: _Reader
) -> AsyncIterator[_Numbered]:
    index, item = 0, first
    while item is not _END:
        request = reader.convert(index, item)
        if request is not None:
            yield index, request
        elif reader.fatal is not None:
            return
        index += 1
        item = await anext(rest, _END)


async def _requests(
    items: Items, reader: _Reader
) -> Iterator[_Numbered] | AsyncIterator[_Numbered]:
    """The numbered Requests of ``items``, after the no-model check on the first item."""
    if isinstance(items, str | bytes | Mapping | Request):
        # Iterating these would send their characters or keys as prompts.
        raise ConfigurationError(
            f"items must be a collection of requests, got a single {type(items).__name__}. "
            "HINT: wrap it in a list: run_many([item], ...)"
        )
    if isinstance(items, AsyncIterable):
        source = aiter(items)
        first = await anext(source, _END)
        reader.check_first(first)
        return _aiterate(first, source, reader)
    iterator = iter(items)
    first = next(iterator, _END)
    reader.check_first(first)
    return _iterate(iterator if first is _END else chain((first,), iterator), reader)


async def run_items(
    engine: Engine,
    items: Items,
    defaults: BodyDefaults,
    sink: Sink,
    *,
    max_concurrency: int,
    fatal_streak: int,
    stream: bool = False,
    background: BackgroundOption | None = None,
) -> RunStats:
    """Send every item, handing each Result (invalid items' included) to ``sink``.

    Invalid items count as failed in the returned stats (and a FatalError's);
    ``fatal_streak`` of them in a row stop the run with ``FatalError``.
    ``stream`` (Streaming, issue 12): stream every request whose endpoint can.
    """
    reader = _Reader(defaults, fatal_streak)
    requests = await _requests(items, reader)
    pending = reader.pending

    async def deliver(result: Result) -> None:
        while pending:
            await sink(pending.popleft())
        await sink(result)

    try:
        stats = await _drive(engine, requests, deliver, max_concurrency, stream, background)
    except FatalError as exc:
        while pending:
            await sink(pending.popleft())
        if exc.stats is not None:
            exc.stats.failed += reader.failed
        raise
    while pending:
        await sink(pending.popleft())
    stats.failed += reader.failed
    if reader.fatal is not None:
        raise FatalError(f"run stopped: {reader.fatal}", reason="error_streak", stats=stats)
    return stats
