"""The Batch API mode's sidecar: ``<OUTPUT>.batches.json``, what a run sent where.

The batches live on the server for a day; the process that created them may
not. So everything needed to find them again is written beside OUTPUT before
and after each step that creates something on the server::

    chunk planned (its INPUT lines, its file on disk)   -> sidecar saved (with the run token)
    POST /v1/files answered (file id)                   -> sidecar saved
    POST /v1/batches answered (batch id)                -> sidecar saved
    batch finished, its results merged into OUTPUT      -> sidecar saved

A run that starts finds the sidecar and re-attaches: a chunk with a batch id
is polled, one with only a file id gets its batch, one with neither is
uploaded. A run killed between a server's answer and the save that records
it is covered too: each upload is named after the run token and the chunk
(``upload_name``), so the next run finds it with ``GET /v1/files``
(``batch_uploads.py``); a batch is found by its input file id with
``GET /v1/batches``.

Each chunk lists its INPUT line numbers as inclusive ranges (``[[1, 5000],
[5002, 9000]]``), so a validation error on line ``k`` of a chunk names the
INPUT line. The file is written atomically (temporary file, ``fsync``,
``os.replace``), so a crash leaves the previous version or the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from ratelane._core.errors import ConfigurationError

__all__ = [
    "SIDECAR_SUFFIX",
    "BatchState",
    "Chunk",
    "LineRanges",
    "chunk_directory",
    "sidecar_path",
    "warn_uncollected",
]

StrPath = str | os.PathLike[str]
logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".batches.json"
_VERSION = 1


def sidecar_path(output_path: StrPath) -> Path:
    """``out.jsonl`` -> ``out.jsonl.batches.json``, beside OUTPUT."""
    return Path(os.fspath(output_path) + SIDECAR_SUFFIX)


def chunk_directory(output_path: StrPath) -> Path:
    """Where chunk files wait for their upload and results for their merge."""
    return Path(os.fspath(output_path) + ".batches.d")


class LineRanges:
    """Ascending INPUT line numbers, held as inclusive ``[first, last]`` ranges.

    ``line(k)`` is the INPUT line of the chunk's ``k``-th line (1-based), a
    bisect over the running counts.
    """

    __slots__ = ("_ends", "ranges")

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self.ranges: list[list[int]] = [list(pair) for pair in ranges]
        self._ends: list[int] | None = None

    def add(self, number: int) -> None:
        ranges = self.ranges
        if ranges and ranges[-1][1] + 1 == number:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
        self._ends = None

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    def line(self, k: int) -> int | None:
        """INPUT line of the ``k``-th line (1-based) of the chunk, ``None`` if out of range."""
        if self._ends is None:
            total = 0
            ends = []
            for first, last in self.ranges:
                total += last - first + 1
                ends.append(total)
            self._ends = ends
        ends = self._ends
        if k < 1 or not ends or k > ends[-1]:
            return None
        index = bisect_right(ends, k - 1)
        before = ends[index - 1] if index else 0
        return self.ranges[index][0] + (k - before - 1)

    def __iter__(self) -> Any:
        for first, last in self.ranges:
            yield from range(first, last + 1)


@dataclass(slots=True, kw_only=True)
class Chunk:
    """One uploaded file and its batch (a new batch replaces a refused one: same file).

    ``status`` is the batch's last seen status, or ``planned`` (file on disk
    only), ``uploaded`` (file id, no batch yet), ``waiting`` (refused with
    ``token_limit_exceeded``, to be created again), ``merged`` (its results
    are in OUTPUT/ERRORS; ``outcome`` is the batch's final status).
    """

    key: int
    url: str
    model: str | None
    lines: int
    bytes: int
    tokens: int
    ranges: list[list[int]]
    file_id: str | None = None
    batch_id: str | None = None
    status: str = "planned"
    completed: int = 0
    failed: int = 0
    created_at: float | None = None
    outcome: str | None = None
    delivered: int = 0
    errors: int = 0
    left: int = 0
    refusals: int = 0
    planned_at: float | None = None  # Unix time its file was written (bounds the upload search)
    inputs: int = 0  # embedding inputs of an /v1/embeddings chunk (at most 50,000 a batch)
    line_ranges: LineRanges = field(default_factory=LineRanges, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.line_ranges = LineRanges(self.ranges)
        self.ranges = self.line_ranges.ranges

    @property
    def name(self) -> str:
        return f"chunk-{self.key:05d}.jsonl"

    @property
    def merged(self) -> bool:
        return self.status == "merged"

    @property
    def label(self) -> str:
        """How messages name it: the batch id, else the chunk."""
        return self.batch_id or f"chunk {self.key}"

    def input_line(self, k: int) -> int | None:
        return self.line_ranges.line(k)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["line_ranges"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Chunk:
        names = {f.name for f in fields(cls)} - {"line_ranges"}
        return cls(**{name: value for name, value in data.items() if name in names})


@dataclass(slots=True)
class BatchState:
    """The sidecar's content: the INPUT it was made from, every chunk so far.

    ``token`` names this run's uploads (``upload_name``); ``token_saved`` says
    whether the sidecar on disk holds it yet (an older sidecar had none).
    """

    path: Path
    input: str
    chunks: list[Chunk] = field(default_factory=list)
    next_key: int = 1
    token: str = field(default_factory=lambda: secrets.token_hex(6))
    token_saved: bool = False

    @classmethod
    def load(cls, output_path: StrPath) -> BatchState | None:
        """The sidecar beside OUTPUT (``None``: none); ConfigurationError if unreadable."""
        path = sidecar_path(output_path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
            if data.get("version") != _VERSION:
                raise ValueError(f"format version {data.get('version')!r}")
            state = cls(
                path=path,
                input=str(data["input"]),
                chunks=[Chunk.from_json(item) for item in data["chunks"]],
                next_key=int(data["next_key"]),
            )
            if "token" in data:  # older sidecars have none: a new one is saved before uploads
                state.token, state.token_saved = str(data["token"]), True
            return state
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"cannot read {path} ({exc}): it records the Batch API batches of {output_path}. "
                "HINT: if those batches are no longer wanted, move the file away and run again"
            ) from None

    @classmethod
    def open(cls, output_path: StrPath, input_path: StrPath) -> BatchState:
        """The sidecar for OUTPUT, or a new empty one; refuses one made from another INPUT."""
        real_input = os.path.realpath(input_path)
        state = cls.load(output_path)
        if state is None:
            return cls(path=sidecar_path(output_path), input=real_input)
        if state.input != real_input and state.active():
            raise ConfigurationError(
                f"{state.path} records unfinished batches of another INPUT ({state.input}). "
                f"HINT: run with that INPUT to collect them, or `ratelane batch cancel "
                f"{os.fspath(output_path)}` first"
            )
        state.input = real_input
        return state

    def active(self) -> list[Chunk]:
        """Chunks whose results are not merged yet."""
        return [chunk for chunk in self.chunks if not chunk.merged]

    def upload_name(self, chunk: Chunk) -> str:
        """The filename ``chunk`` is uploaded under: this run's token and the chunk's name."""
        return f"ratelane-{self.token}-{chunk.name}"

    def new_key(self) -> int:
        key = self.next_key
        self.next_key += 1
        return key

    def save(self) -> None:
        """Write atomically: temporary file, fsync, rename, fsync of the directory."""
        data = orjson.dumps(
            {
                "version": _VERSION,
                "input": self.input,
                "next_key": self.next_key,
                "token": self.token,
                "chunks": [chunk.to_json() for chunk in self.chunks],
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            self.token_saved = True
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        with contextlib.suppress(OSError):
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def warn_uncollected(output_path: StrPath) -> None:
    """Before a real-time run: say so if OUTPUT has batches not collected yet (cheap: one stat)."""
    if not sidecar_path(output_path).exists():
        return
    try:
        state = BatchState.load(output_path)
    except ConfigurationError:
        return
    active = state.active() if state is not None else []
    if active:
        logger.warning(
            "%s has %d Batch API %s not collected yet; real-time mode sends their lines too "
            "(a batch's copy is skipped when collected). HINT: collect them with --via batch, "
            "or `ratelane batch cancel %s` to stop paying for both",
            os.fspath(output_path),
            len(active),
            "batch" if len(active) == 1 else "batches",
            os.fspath(output_path),
        )
