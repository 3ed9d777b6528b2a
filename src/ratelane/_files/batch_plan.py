"""Splitting the lines to send into Batch API input files ("chunks").

The service wants one endpoint and one model per batch, at most 50,000
lines and 200 MB per file, and for ``/v1/embeddings`` at most 50,000
embedding inputs summed over the lines (protocol notes 6.2). So lines are
grouped by ``(url, body.model)`` and each group is cut into chunks when the
next line would pass a cap: ``max_lines``, ``max_bytes`` of the file,
``max_inputs`` (embedding inputs, ``embedding_inputs``), or ``max_tokens``
of estimated input tokens (``--max-enqueued-tokens``, so one chunk always
fits the pool). A single line larger than a cap still gets a chunk of its
own (the service then says what is wrong with it).

One streaming pass over INPUT: each group has one open file at a time, so
memory holds one buffered writer per group, never the lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ratelane._core.tokens import estimate_input_tokens

from .batch_state import Chunk
from .input import BatchLine

__all__ = ["MAX_EMBEDDING_INPUTS", "ChunkLimits", "embedding_inputs", "plan_chunks"]

_BUFFER = 1 << 20
_EMBEDDINGS = "/v1/embeddings"
#: Embedding inputs one batch may hold, summed over its lines (protocol notes 6.2).
MAX_EMBEDDING_INPUTS = 50_000


def embedding_inputs(body: Any) -> int:
    """How many inputs an embeddings request body embeds.

    A string is one input; an array of strings or of token arrays is one input
    per element; an array of token ids (integers) is a single tokenized input.
    """
    value = body.get("input") if isinstance(body, dict) else None
    if not isinstance(value, list) or not value:
        return 1
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return 1
    return len(value)


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """The caps of one chunk; ``max_tokens`` ``None`` means no token cap.

    ``max_inputs`` caps the embedding inputs of an ``/v1/embeddings`` chunk.
    """

    max_lines: int
    max_bytes: int
    max_tokens: int | None = None
    max_inputs: int = MAX_EMBEDDING_INPUTS

    def full(self, chunk: Chunk, size: int, tokens: int, inputs: int = 0) -> bool:
        """Whether a line of ``size`` bytes, ``tokens`` tokens and ``inputs`` embedding
        inputs no longer fits ``chunk``."""
        if chunk.lines == 0:
            return False
        return (
            chunk.lines >= self.max_lines
            or chunk.bytes + size > self.max_bytes
            or (self.max_tokens is not None and chunk.tokens + tokens > self.max_tokens)
            or chunk.inputs + inputs > self.max_inputs
        )


def _close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def plan_chunks(
    lines: Iterable[BatchLine],
    directory: Path,
    limits: ChunkLimits,
    *,
    new_key: Callable[[], int],
) -> list[Chunk]:
    """Write the chunk files of ``lines`` into ``directory``; return the chunks, by key.

    Each file line is ``{"custom_id", "method": "POST", "url", "body"}``.
    Every file is fsync-ed before this returns.
    """
    directory.mkdir(parents=True, exist_ok=True)
    chunks: list[Chunk] = []
    current: dict[tuple[str, str | None], tuple[Chunk, BinaryIO]] = {}
    dumps = orjson.dumps
    try:
        for line in lines:
            body = line.body
            model = body.get("model")
            group = (line.path, model if isinstance(model, str) else None)
            data = dumps(
                {"custom_id": line.custom_id, "method": "POST", "url": line.path, "body": body}
            )
            size = len(data) + 1
            tokens = estimate_input_tokens(body)
            inputs = embedding_inputs(body) if line.path == _EMBEDDINGS else 0
            entry = current.get(group)
            if entry is not None and limits.full(entry[0], size, tokens, inputs):
                _close(entry[1])
                entry = None
            if entry is None:
                chunk = Chunk(
                    key=new_key(),
                    url=group[0],
                    model=group[1],
                    lines=0,
                    bytes=0,
                    tokens=0,
                    ranges=[],
                )
                handle = open(directory / chunk.name, "wb", buffering=_BUFFER)  # noqa: SIM115
                entry = current[group] = (chunk, handle)
                chunks.append(chunk)
            chunk, handle = entry
            handle.write(data)
            handle.write(b"\n")
            chunk.lines += 1
            chunk.bytes += size
            chunk.tokens += tokens
            chunk.inputs += inputs
            chunk.line_ranges.add(line.line_number)
    finally:
        for _, handle in current.values():
            if not handle.closed:
                _close(handle)
    return sorted(chunks, key=lambda chunk: chunk.key)
