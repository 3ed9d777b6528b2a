"""Server-sent events: an incremental parser, bytes in, events out.

The rules are the WHATWG ``text/event-stream`` ones, reduced to what the
OpenAI streams (and the gateways in front of them) use:

- A line ends with CRLF, LF or CR; a chunk may end anywhere, even between
  the CR and LF of one line ending, or inside a multi-byte UTF-8 character.
- ``field: value`` (one space after the colon is dropped); ``field`` alone
  is a field with an empty value; a line starting with ``:`` is a comment.
- ``event`` names the event; each ``data`` line adds one line to the data
  (joined with ``\\n``); ``id`` sets the last event id (kept across events);
  ``retry`` and unknown fields are ignored.
- A blank line dispatches the event, unless it has no data line at all
  (then the pending ``event`` name is dropped, per the spec).
- A UTF-8 byte order mark at the very start is skipped.
- At the end of the stream, an event without its closing blank line is
  discarded (the spec's rule); :attr:`SSEParser.pending` says one was cut.

Responses API streams send ``event: <type>`` plus one ``data: <JSON>`` line
per event; Chat Completions streams send data lines only and end with
``data: [DONE]``, which some gateways also append to Responses streams:
:attr:`SSEEvent.is_done` recognises it so a caller can stop instead of
failing to parse it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["DONE", "SSEEvent", "SSEParser", "parse_events"]

#: The data of the end-of-stream sentinel of Chat Completions (and some gateways).
DONE = "[DONE]"

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its ``event`` name (``None`` when absent), data and last id."""

    event: str | None
    data: str
    id: str | None = None

    @property
    def is_done(self) -> bool:
        """The ``[DONE]`` sentinel (the SDK stops at any data starting with it)."""
        return self.data.startswith(DONE)

    def json(self) -> Any:
        """The data parsed as JSON (orjson); ``orjson.JSONDecodeError`` is a ``ValueError``."""
        return orjson.loads(self.data)


class SSEParser:
    """Feed bytes with :meth:`feed`, get the events each chunk completes.

    ::

        parser = SSEParser()
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                ...
        parser.close()   # then parser.pending: was the last event cut?

    Pure and synchronous: no I/O, no clock; one instance per stream.
    """

    __slots__ = ("_after_cr", "_buffer", "_data", "_event", "_last_id", "_started")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._after_cr = False  # the last chunk ended with CR: skip an LF that follows
        self._started = False  # the BOM check is done
        self._event: str | None = None
        self._data: list[str] = []
        self._last_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"SSEParser(buffered={len(self._buffer)}, pending={self.pending}, "
            f"last_id={self._last_id!r})"
        )

    @property
    def pending(self) -> bool:
        """Bytes or fields received that no blank line has dispatched yet."""
        return bool(self._buffer) or bool(self._data) or self._event is not None

    @property
    def last_id(self) -> str | None:
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk`` (often none, sometimes many)."""
        buffer = self._buffer
        buffer += chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(bytes(buffer)):
                return []  # maybe a BOM, not complete yet
            if buffer.startswith(_BOM):
                del buffer[: len(_BOM)]
            self._started = True
        if not buffer:
            return []
        if not self._after_cr and b"\r" not in buffer:
            return self._feed_lf(buffer)
        start = 0
        if self._after_cr and buffer[:1] == b"\n":
            start = 1
        self._after_cr = False
        events: list[SSEEvent] = []
        for match in _LINE_END.finditer(buffer, start):
            if match.group() == b"\r" and match.end() == len(buffer):
                # A CR at the end of the chunk: the line ends, an LF may follow next time.
                self._after_cr = True
            event = self._line(bytes(buffer[start : match.start()]))
            if event is not None:
                events.append(event)
            start = match.end()
        del buffer[:start]
        return events

    def _feed_lf(self, buffer: bytearray) -> list[SSEEvent]:
        """The usual framing, LF line ends only: one decode and one split per chunk.

        (A line end never falls inside a UTF-8 character, so decoding the
        complete lines at once replaces invalid bytes exactly as line by line.)
        """
        end = buffer.rfind(b"\n")
        if end < 0:
            return []
        text = buffer[:end].decode("utf-8", errors="replace")
        del buffer[: end + 1]
        events: list[SSEEvent] = []
        line = self._text_line
        for raw in text.split("\n"):
            event = line(raw)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        """End of stream: drop what no blank line closed (see :attr:`pending` first)."""
        self._buffer.clear()
        self._data.clear()
        self._event = None

    def _line(self, raw: bytes) -> SSEEvent | None:
        return self._text_line(raw.decode("utf-8", errors="replace")) if raw else self._dispatch()

    def _text_line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment (keep-alive)
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._event = None
        if not data:
            return None
        self._data = []
        return SSEEvent(event or None, "\n".join(data), self._last_id)


def parse_events(payload: bytes) -> list[SSEEvent]:
    """Every complete event of a whole stream body (tests, replays)."""
    parser = SSEParser()
    events = parser.feed(payload)
    parser.close()
    return events
