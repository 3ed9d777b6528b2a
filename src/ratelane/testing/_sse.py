"""SSE streams: the events of a Response or chat completion, and writing them paced.

The events are derived from the very Response object a non-streaming create
would return, so ``response.completed`` carries exactly that body. Order
(protocol notes 5.2), ``sequence_number`` from 0, one per event::

    response.created -> [response.queued, background only] -> response.in_progress
    per output item i:
        reasoning: response.output_item.added -> response.output_item.done
        message:   response.output_item.added -> response.content_part.added
                   -> response.output_text.delta x N -> response.output_text.done
                   -> response.content_part.done -> response.output_item.done
    response.completed  (or response.incomplete / response.failed)

A stream fault cuts the sequence after about half the deltas (right after
``response.in_progress`` when there are none): ``cut`` closes the
connection there, ``failed`` sends ``response.failed``, ``error`` sends the
nested-shape ``error`` event observed on the wire (5.4) and then
``response.failed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from ratelane._core.tokens import CHARS_PER_TOKEN

from ._background import FAILED_ERROR, failed, with_status
from ._modes import StreamFaultKind

__all__ = [
    "Frame",
    "Step",
    "chat_frames",
    "chat_steps",
    "response_frames",
    "response_steps",
    "write_stream",
]

_EVENT_STREAM = "text/event-stream; charset=utf-8"


class Step(NamedTuple):
    """One event (without ``sequence_number``); ``tokens`` > 0 marks a paced delta.

    A named tuple, not a frozen dataclass: a stream builds one per event, and a
    frozen dataclass costs several times more to create.
    """

    event: dict[str, Any]
    tokens: int = 0


#: One SSE frame as sent, and the output tokens it carries (> 0 for a paced delta).
Frame = tuple[bytes, int]


def _event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **fields}


def _item_steps(index: int, item: Mapping[str, Any], chunk_chars: int) -> list[Step]:
    if item.get("type") != "message":
        started = dict(item)
        if "summary" in started:
            started["summary"] = []
        return [
            Step(_event("response.output_item.added", output_index=index, item=started)),
            Step(_event("response.output_item.done", output_index=index, item=dict(item))),
        ]
    item_id = item["id"]
    added = dict(item, status="in_progress", content=[])
    steps = [Step(_event("response.output_item.added", output_index=index, item=added))]
    for content_index, part in enumerate(item.get("content", [])):
        where = {"item_id": item_id, "output_index": index, "content_index": content_index}
        text = part.get("text", "")
        empty = dict(part, text="") if "text" in part else dict(part)
        steps.append(Step(_event("response.content_part.added", **where, part=empty)))
        for start in range(0, len(text), chunk_chars):
            delta = text[start : start + chunk_chars]
            tokens = -(-len(delta) // CHARS_PER_TOKEN)
            steps.append(
                Step(
                    _event("response.output_text.delta", **where, delta=delta, logprobs=[]),
                    tokens,
                )
            )
        steps.append(Step(_event("response.output_text.done", **where, text=text, logprobs=[])))
        steps.append(Step(_event("response.content_part.done", **where, part=dict(part))))
    steps.append(Step(_event("response.output_item.done", output_index=index, item=dict(item))))
    return steps


def response_steps(
    final: Mapping[str, Any],
    *,
    chunk_chars: int,
    fault: StreamFaultKind | None = None,
    background: bool = False,
) -> list[Step]:
    """The events of a stream answering with ``final`` (a terminal Response).

    With ``fault`` ``"cut"`` the list ends at the cut point (the writer then
    drops the connection); ``"failed"``/``"error"`` end it with the failure.
    A ``final`` whose status is ``failed`` streams like the ``"failed"`` fault.
    """
    if final["status"] == "failed" and fault is None:
        fault = "failed"
    first = with_status(final, "queued" if background else "in_progress")
    steps = [Step(_event("response.created", response=first))]
    if background:
        steps.append(Step(_event("response.queued", response=first)))
    steps.append(Step(_event("response.in_progress", response=with_status(final, "in_progress"))))
    head = len(steps)
    for index, item in enumerate(final["output"]):
        steps.extend(_item_steps(index, item, chunk_chars))
    if fault is None:
        incomplete = final["status"] == "incomplete"
        terminal = "response.incomplete" if incomplete else "response.completed"
        steps.append(Step(_event(terminal, response=dict(final))))
        return steps
    deltas = [i for i, step in enumerate(steps) if step.tokens]
    cut_at = deltas[len(deltas) // 2] if deltas else head
    steps = steps[:cut_at]
    if fault == "error":
        error = {"type": "server_error", "param": None, **FAILED_ERROR}
        steps.append(Step(_event("error", error=error)))
    if fault in ("error", "failed"):
        steps.append(Step(_event("response.failed", response=failed(final))))
    return steps


def response_frames(steps: list[Step]) -> list[Frame]:
    """Responses framing: ``event:`` and ``data:`` lines, ``sequence_number`` from 0."""
    frames = []
    for number, step in enumerate(steps):
        event = step.event
        event["sequence_number"] = number  # each event dict is built for this stream only
        name: str = event["type"]
        frame = b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        frames.append((frame, step.tokens))
    return frames


def chat_steps(
    completion: Mapping[str, Any],
    *,
    chunk_chars: int,
    include_usage: bool,
    fault: StreamFaultKind | None = None,
) -> list[Step]:
    """The ``chat.completion.chunk`` sequence of a Chat Completions stream (protocol notes 5.5).

    Per choice: a first chunk with the role and empty content, content chunks,
    then an empty delta with ``finish_reason``. With ``include_usage`` every
    chunk has ``usage: null`` and one last chunk with ``choices: []`` carries
    the usage. A ``cut`` ends after about half the content chunks; ``error``
    and ``failed`` (there is no ``response.failed`` here) end there with a
    data payload holding an ``error`` object, which the SDK raises.
    """
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "service_tier": completion["service_tier"],
        "system_fingerprint": completion["system_fingerprint"],
    }
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None, tokens: int = 0) -> Step:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return Step({**base, "choices": [choice]}, tokens)

    steps = []
    for choice in completion["choices"]:
        index, text = choice["index"], choice["message"]["content"]
        steps.append(chunk(index, {"role": "assistant", "content": "", "refusal": None}, None))
        for start in range(0, len(text), chunk_chars):
            delta = text[start : start + chunk_chars]
            steps.append(chunk(index, {"content": delta}, None, -(-len(delta) // CHARS_PER_TOKEN)))
        steps.append(chunk(index, {}, choice["finish_reason"]))
    if fault is None:
        if include_usage:
            steps.append(Step({**base, "choices": [], "usage": completion["usage"]}))
        return steps
    deltas = [i for i, step in enumerate(steps) if step.tokens]
    steps = steps[: deltas[len(deltas) // 2] if deltas else 1]
    if fault != "cut":
        steps.append(Step({"error": {"type": "server_error", "param": None, **FAILED_ERROR}}))
    return steps


def chat_frames(steps: list[Step], *, done: bool) -> list[Frame]:
    """Chat Completions framing: ``data:`` lines only, then ``data: [DONE]`` when ``done``."""
    frames = [(b"data: " + orjson.dumps(step.event) + b"\n\n", step.tokens) for step in steps]
    if done:
        frames.append((b"data: [DONE]\n\n", 0))
    return frames


async def write_stream(
    request: web.BaseRequest,
    headers: Mapping[str, str],
    frames: list[Frame],
    *,
    first_token_s: float,
    per_output_token_s: float,
    cut: bool,
    drop: Callable[[web.BaseRequest], None],
) -> web.StreamResponse:
    """Send ``frames`` as SSE; the first delta waits ``first_token_s``, each later one its tokens.

    Events between two waits go out in one write. ``cut`` drops the
    connection after the last step instead of ending the stream.
    """
    response = web.StreamResponse(status=200, headers=headers)
    response.headers["Content-Type"] = _EVENT_STREAM
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    pending = bytearray()
    seen_delta = False
    for frame, tokens in frames:
        if tokens:
            wait = per_output_token_s * tokens if seen_delta else first_token_s
            seen_delta = True
            if wait > 0:
                if pending:
                    await response.write(bytes(pending))
                    pending.clear()
                await asyncio.sleep(wait)
        pending += frame
    if pending:
        await response.write(bytes(pending))
    if cut:
        drop(request)
        return response
    await response.write_eof()
    return response
