"""The resume marker: how far INPUT is known done, so a resume need not read it all again.

A resume used to read all of OUTPUT (to learn which ids succeeded) and walk
all of INPUT (to skip them): ~9 s at a million lines. The marker is a small
JSON sidecar beside OUTPUT (``<OUTPUT>.resume.json``) holding checkpoints::

    (input_offset, input_line, done_lines, output_size, output_tail, scan_from)

meaning: *every non-blank INPUT line below byte ``input_offset`` (physical
line ``input_line``, ``done_lines`` non-blank lines) has its success within
the first ``output_size`` bytes of OUTPUT*, whose last (up to) 4 KiB hash to
``output_tail``, *and every success of a later line is at or after OUTPUT
offset* ``scan_from``. A resume then starts reading INPUT at
``input_offset`` and builds its done-set from OUTPUT's bytes after
``scan_from`` only.

Soundness:

- A checkpoint is taken right after OUTPUT was fsync-ed, from results whose
  lines were written before that fsync, so it never claims a line whose
  success is not durably in OUTPUT. Results finish out of order: the marker
  is the longest *prefix* of INPUT whose lines all succeeded, see
  :class:`DonePrefix`. "Done" means a success: the marker never passes a
  failed line, which a resume must send again.
- The sidecar is replaced atomically (temporary file, fsync, rename).
- On load it is trusted only when INPUT's stat fingerprint is the one recorded
  (and the caller checked, through the validation sidecar, that INPUT is
  unchanged), OUTPUT is the same file (device, inode), and the checkpoint's
  ``output_size`` bytes are still there with the same tail. Several
  checkpoints are kept (the latest ones and older ones spaced out), so an
  OUTPUT cut back by hand falls back to an older checkpoint that is still
  intact; anything else means the full scan, never a guess.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from .validated import Fingerprint

__all__ = ["Checkpoint", "DonePrefix", "MarkerFile", "Position", "load_checkpoint", "marker_path"]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

MARKER_SUFFIX = ".resume.json"
_VERSION = 1
_TAIL_BYTES = 4096
#: Checkpoints kept in the sidecar: the newest ``_RECENT`` always, older ones thinned.
_KEEP = 32
_RECENT = 8
#: Lines sent past the prefix that :class:`DonePrefix` tracks at most (~150 bytes each).
MAX_WINDOW = 100_000

#: ``(input_offset, input_line, done_lines)``: a place in INPUT between two lines.
Position = tuple[int, int, int]
START: Position = (0, 0, 0)


def marker_path(output_path: StrPath) -> Path:
    """``out.jsonl`` -> ``out.jsonl.resume.json``, beside OUTPUT."""
    return Path(os.fspath(output_path) + MARKER_SUFFIX)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Every non-blank INPUT line below ``input_offset`` succeeded in ``OUTPUT[:output_size]``;
    successes of later lines are at or after ``scan_from`` (``<= output_size``)."""

    input_offset: int
    input_line: int
    done_lines: int
    output_size: int
    output_tail: str
    scan_from: int

    @property
    def position(self) -> Position:
        return (self.input_offset, self.input_line, self.done_lines)


def _tail_digest(fd: int, size: int) -> str:
    start = max(0, size - _TAIL_BYTES)
    data = os.pread(fd, size - start, start)
    if len(data) != size - start:
        return ""  # the file is shorter than claimed
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- tracking


class DonePrefix:
    """The longest prefix of INPUT whose lines all have a success written, O(1) per line.

    The reader of INPUT reports each line it reads (:attr:`frontier`, the
    position after it), each line it skips as already done (:attr:`skips`,
    :attr:`last_skip`, the position after it) and each line
    it hands out (:meth:`sent`, with the position before it); the result sink
    reports each written result (:meth:`succeeded` with the OUTPUT offset of
    its line, :meth:`failed`). Sent lines wait in a FIFO until every earlier
    one succeeded.

    Successes of lines above the prefix (finished out of order) are in OUTPUT
    too, so :meth:`marker` also gives ``scan_from``: the OUTPUT offset from
    which a resume must read to find all of them (the earliest such line
    written, or OUTPUT's end). The first failure freezes both for the rest of
    the run (the line is sent again on resume), and from then on nothing is
    recorded; so does a window of more than ``MAX_WINDOW`` lines behind one
    unfinished request, which bounds the memory.
    """

    __slots__ = (
        "_done_count",
        "_floor",
        "_frozen",
        "_pending",
        "_queue",
        "_written",
        "frontier",
        "last_skip",
        "skips",
    )

    def __init__(self, start: Position = START, *, scan_from: int = 0, done: int = 0) -> None:
        self.frontier: Position = start
        # Lines skipped because OUTPUT (read from ``scan_from`` on, ``done`` successes)
        # has them: their successes lie anywhere after ``scan_from``, so it stays the
        # floor of scan_from until the prefix has passed every one of them.
        self.skips = 0
        self.last_skip: Position = start
        self._done_count = done
        self._floor: int | None = scan_from if done else None
        # Each sent line: [position before it, succeeded, below the prefix]; oldest first.
        self._queue: deque[list[Any]] = deque()
        self._pending: dict[str, list[Any]] = {}
        # Successes above the prefix, in OUTPUT order: (offset of the line, its entry).
        self._written: deque[tuple[int, list[Any]]] = deque()
        self._frozen: tuple[Position, int] | None = None

    def sent(self, custom_id: str, before: Position) -> None:
        if self._frozen is None:
            entry = [before, False, False]
            self._queue.append(entry)
            self._pending[custom_id] = entry

    def succeeded(self, custom_id: str, output_offset: int) -> None:
        """``custom_id``'s success line was written at ``output_offset`` in OUTPUT."""
        entry = self._pending.pop(custom_id, None)
        if entry is None:
            return
        entry[1] = True
        self._written.append((output_offset, entry))
        queue = self._queue
        while queue and queue[0][1]:
            queue.popleft()[2] = True
        if len(queue) > MAX_WINDOW:
            # A request stuck for long while the rest flows: stop tracking rather than
            # hold every later line (the prefix stays before it, which is sound).
            self._freeze(output_offset)

    def _freeze(self, output_size: int) -> None:
        self._frozen = self.marker(output_size)
        self._queue.clear()
        self._pending.clear()
        self._written.clear()

    def failed(self, custom_id: str, output_size: int) -> None:
        """``custom_id`` failed (sent again on resume); OUTPUT is ``output_size`` bytes."""
        if self._pending.pop(custom_id, None) is None:
            return
        # Later successes land at or after output_size, or are already in _written.
        self._freeze(output_size)

    def position(self) -> Position:
        """Every non-blank line before this position has a success written."""
        if self._frozen is not None:
            return self._frozen[0]
        if self._queue:
            before: Position = self._queue[0][0]
            return before
        return self.frontier

    def marker(self, output_size: int) -> tuple[Position, int]:
        """``(position, scan_from)`` with OUTPUT ``output_size`` bytes long: every success
        of a line at or after ``position`` is at or after OUTPUT offset ``scan_from``."""
        if self._frozen is not None:
            return self._frozen
        written = self._written
        while written and written[0][1][2]:
            written.popleft()
        position = self.position()
        scan_from = written[0][0] if written else output_size
        if self._floor is not None:
            if self.skips >= self._done_count and position[0] >= self.last_skip[0]:
                self._floor = None  # every skipped line is below the prefix
            else:
                scan_from = min(scan_from, self._floor)
        return position, scan_from


# --------------------------------------------------------------------------- the sidecar


class MarkerFile:
    """Writes checkpoints of one run into ``<OUTPUT>.resume.json``; call :meth:`checkpoint`
    right after each fsync of OUTPUT."""

    __slots__ = ("_checkpoints", "_fingerprint", "_input", "_output", "_output_id", "_path")

    def __init__(
        self,
        output_path: StrPath,
        input_path: StrPath,
        fingerprint: Fingerprint,
        *,
        earlier: tuple[Checkpoint, ...] = (),
    ) -> None:
        self._output = Path(output_path)
        self._path = marker_path(output_path)
        self._input = os.path.realpath(input_path)
        self._fingerprint = fingerprint
        stat = os.stat(output_path)
        self._output_id = (stat.st_dev, stat.st_ino)
        self._checkpoints: list[Checkpoint] = list(earlier)

    def checkpoint(self, prefix: DonePrefix, output_size: int) -> None:
        """Record ``prefix`` now that OUTPUT's first ``output_size`` bytes are fsync-ed."""
        position, scan_from = prefix.marker(output_size)
        if position[2] == 0:
            return
        last = self._checkpoints[-1] if self._checkpoints else None
        if last is not None and (last.position, last.scan_from) == (position, scan_from):
            return
        try:
            with open(self._output, "rb", buffering=0) as file:
                tail = _tail_digest(file.fileno(), output_size)
        except OSError:
            return
        if not tail:
            return
        self._checkpoints.append(Checkpoint(*position, output_size, tail, scan_from))
        _thin(self._checkpoints)
        self._save()

    def _save(self) -> None:
        fp = self._fingerprint
        data = orjson.dumps(
            {
                "version": _VERSION,
                "input": self._input,
                "fingerprint": [fp.device, fp.inode, fp.size, fp.mtime_ns, fp.ctime_ns],
                "output": list(self._output_id),
                "checkpoints": [asdict(checkpoint) for checkpoint in self._checkpoints],
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path)
        except OSError as exc:
            # Only costs a slower resume: the previous marker stays, still sound.
            logger.debug("could not write the resume marker %s: %s", self._path, exc)
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _thin(checkpoints: list[Checkpoint]) -> None:
    """Keep ``_KEEP`` checkpoints: the newest ``_RECENT`` and older ones spread out."""
    while len(checkpoints) > _KEEP:
        # Drop the older checkpoint whose neighbours are closest together.
        drop = min(
            range(1, len(checkpoints) - _RECENT),
            key=lambda i: checkpoints[i + 1].output_size - checkpoints[i - 1].output_size,
        )
        del checkpoints[drop]


def load_checkpoint(
    output_path: StrPath, input_path: StrPath, fingerprint: Fingerprint
) -> tuple[Checkpoint | None, tuple[Checkpoint, ...]]:
    """The newest checkpoint still valid for this INPUT and OUTPUT, and those up to it.

    ``fingerprint`` is INPUT's current one, known unchanged since validation.
    ``(None, ())`` whenever anything does not match: the caller scans everything.
    """
    try:
        saved = orjson.loads(marker_path(output_path).read_bytes())
        if saved.get("version") != _VERSION or saved["input"] != os.path.realpath(input_path):
            return None, ()
        fp = fingerprint
        if saved["fingerprint"] != [fp.device, fp.inode, fp.size, fp.mtime_ns, fp.ctime_ns]:
            return None, ()
        checkpoints = [Checkpoint(**item) for item in saved["checkpoints"]]
        with open(output_path, "rb", buffering=0) as file:
            stat = os.fstat(file.fileno())
            if saved["output"] != [stat.st_dev, stat.st_ino]:
                return None, ()
            for index in range(len(checkpoints) - 1, -1, -1):
                checkpoint = checkpoints[index]
                if (
                    0 <= checkpoint.scan_from <= checkpoint.output_size <= stat.st_size
                    and checkpoint.output_size > 0
                    and 0 < checkpoint.input_offset <= fp.size
                    and checkpoint.done_lines > 0
                    and _tail_digest(file.fileno(), checkpoint.output_size)
                    == checkpoint.output_tail
                ):
                    return checkpoint, tuple(checkpoints[: index + 1])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None, ()
