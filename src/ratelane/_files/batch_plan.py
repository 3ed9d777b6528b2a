"""Splitting the lines to send into Batch API input files ("chunks").

The service wants one endpoint and one model per batch, at most 50,000
lines and 200 MB per file (protocol notes 6.2). So lines are grouped by
``(url, body.model)`` and each group is cut into chunks when the next line
would pass a cap: ``max_lines``, ``max_bytes`` of the file, or
``max_tokens`` of estimated input tokens (``--max-enqueued-tokens``, so one
chunk always fits the pool). A single line larger than a cap still gets a
chunk of its own (the service then says what is wrong with it).

One streaming pass over INPUT: each group has one open file at a time, so
memory holds one buffered writer per group, never the lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from ratelane._core.tokens import estimate_input_tokens

from .batch_state import Chunk
from .input import BatchLine

__all__ = ["ChunkLimits", "plan_chunks"]

_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """The caps of one chunk; ``max_tokens`` ``None`` means no token cap."""

    max_lines: int
    max_bytes: int
    max_tokens: int | None = None

    def full(self, chunk: Chunk, size: int, tokens: int) -> bool:
        """Whether a line of ``size`` bytes and ``tokens`` tokens no longer fits ``chunk``."""
        if chunk.lines == 0:
            return False
        return (
            chunk.lines >= self.max_lines
            or chunk.bytes + size > self.max_bytes
            or (self.max_tokens is not None and chunk.tokens + tokens > self.max_tokens)
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
            entry = current.get(group)
            if entry is not None and limits.full(entry[0], size, tokens):
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
            chunk.line_ranges.add(line.line_number)
    finally:
        for _, handle in current.values():
            if not handle.closed:
                _close(handle)
    return sorted(chunks, key=lambda chunk: chunk.key)
