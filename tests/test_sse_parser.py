"""The incremental SSE parser: framing rules table-driven, chunk splits by hypothesis."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratelane._http.sse import SSEEvent, SSEParser, parse_events

E = SSEEvent

CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("responses event", b'event: a\ndata: {"x":1}\n\n', [E("a", '{"x":1}')]),
    ("data only", b"data: hi\n\n", [E(None, "hi")]),
    ("multi-line data", b"data: one\ndata: two\n\n", [E(None, "one\ntwo")]),
    ("crlf", b"event: a\r\ndata: x\r\n\r\n", [E("a", "x")]),
    ("cr only", b"event: a\rdata: x\r\r", [E("a", "x")]),
    (
        "mixed endings",
        b"data: a\r\n\ndata: b\r\rdata: c\n\r\n",
        [E(None, "a"), E(None, "b"), E(None, "c")],
    ),
    ("comment ignored", b": keep-alive\ndata: x\n: more\n\n", [E(None, "x")]),
    ("only one space dropped", b"data:  two\n\n", [E(None, " two")]),
    ("no space after colon", b"data:x\n\n", [E(None, "x")]),
    ("field without colon", b"data\ndata\n\n", [E(None, "\n")]),
    ("empty data dispatches", b"data:\n\n", [E(None, "")]),
    ("event without data is dropped", b"event: a\n\ndata: x\n\n", [E(None, "x")]),
    ("blank lines alone", b"\n\n\r\n", []),
    ("unknown field and retry ignored", b"retry: 10\nfoo: bar\ndata: x\n\n", [E(None, "x")]),
    (
        "id kept across events",
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [E(None, "a", "7"), E(None, "b", "7")],
    ),
    ("id with NUL ignored", b"id: a\x00b\ndata: x\n\n", [E(None, "x")]),
    ("bom skipped", b"\xef\xbb\xbfdata: x\n\n", [E(None, "x")]),
    ("unterminated event dropped", b"data: a\n\ndata: b\n", [E(None, "a")]),
    ("done sentinel", b"data: [DONE]\n\n", [E(None, "[DONE]")]),
    ("utf-8", "data: héllo ✓\n\n".encode(), [E(None, "héllo ✓")]),
    ("colon in value", b'data: {"a":"b:c"}\n\n', [E(None, '{"a":"b:c"}')]),
]


@pytest.mark.parametrize(("name", "payload", "expected"), CASES, ids=[c[0] for c in CASES])
def test_framing(name: str, payload: bytes, expected: list[SSEEvent]) -> None:
    assert parse_events(payload) == expected


@pytest.mark.parametrize(("name", "payload", "expected"), CASES, ids=[c[0] for c in CASES])
def test_byte_by_byte_gives_the_same_events(
    name: str, payload: bytes, expected: list[SSEEvent]
) -> None:
    parser = SSEParser()
    events = [event for i in range(len(payload)) for event in parser.feed(payload[i : i + 1])]
    assert events == expected


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []  # the LF of CRLF, not a blank line
    assert parser.feed(b"\r\n") == [E(None, "x")]


def test_pending_tells_a_cut_stream() -> None:
    parser = SSEParser()
    parser.feed(b"event: response.completed\ndata: {")
    assert parser.pending
    parser.close()
    assert not parser.pending
    parser.feed(b"data: x\n\n")
    assert not parser.pending


def test_json_and_done() -> None:
    event = E("response.output_text.delta", '{"delta":"Hi","sequence_number":4}')
    assert event.json() == {"delta": "Hi", "sequence_number": 4}
    assert not event.is_done
    assert E(None, "[DONE]").is_done
    with pytest.raises(orjson.JSONDecodeError):
        E(None, "[DONE]").json()


def test_repr_shows_state() -> None:
    parser = SSEParser()
    parser.feed(b"id: 3\ndata: x")
    assert repr(parser) == "SSEParser(buffered=7, pending=True, last_id='3')"


_fields = st.sampled_from(["event", "data", "id", "retry", ""])
_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    max_size=12,
)
_line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def _streams(draw: st.DrawFn) -> bytes:
    """Random streams: fields, comments and blank lines with any line ending."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["field", "comment", "blank"]))
        if kind == "field":
            name = draw(_fields)
            out += f"{name}:{draw(_values)}".encode() if name else b":x"
        elif kind == "comment":
            out += b": " + draw(_values).encode()
        out += draw(_line_ends)
    return bytes(out)


@given(payload=_streams(), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_chunk_split_gives_the_same_events(payload: bytes, cuts: list[int]) -> None:
    whole = SSEParser()
    expected = whole.feed(payload)
    points = sorted({min(cut, len(payload)) for cut in cuts})
    parser = SSEParser()
    events: list[SSEEvent] = []
    previous = 0
    for point in [*points, len(payload)]:
        events += parser.feed(payload[previous:point])
        previous = point
    assert events == expected
    assert parser.pending == whole.pending


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["response.created", "response.output_text.delta", "error"]),
            st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_openai_shaped_streams_round_trip(
    events: list[tuple[str, dict[str, str]]], cuts: list[int]
) -> None:
    payload = b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        for name, data in events
    )
    parser = SSEParser()
    got: list[SSEEvent] = []
    previous = 0
    for point in [*sorted(min(c, len(payload)) for c in cuts), len(payload)]:
        got += parser.feed(payload[previous:point])
        previous = point
    assert [(event.event, event.json()) for event in got] == events
    assert not parser.pending
