"""The pending journal: which background responses were created, so a crash never pays twice.

A background create answers at once with a response id; the answer itself
comes minutes later. The id is the only way back to it, so it is written
down the moment the create answers, before polling starts::

    {"custom_id": "q1", "id": "resp_..."}     one JSON object a line
    {"custom_id": "q1", "id": null}           forgotten (failed, cancelled, gone)

The contract, like OUTPUT's:

- **Appended, one write per line, flushed at once.** A SIGKILL right after
  the create answered still leaves the line in the file (the kernel holds
  it); a torn last line (a crash inside the write) is ignored on load.
- **Last line wins.** ``id: null`` forgets an id: the line is created again
  on the next run (its response failed or was cancelled, nothing to re-attach).
- **Re-attach, never re-create.** A run that finds a custom_id here polls the
  id instead of sending the create again.
- **Compacted on open.** :meth:`PendingJournal.open` keeps only the entries a
  caller still wants (a file run drops those already in OUTPUT) and rewrites
  the file atomically, so it stays as small as the work in progress.

The file is never locked on its own: a file run holds OUTPUT's lock, and a
``run_many(journal=...)`` caller owns its path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson

__all__ = ["PendingJournal", "pending_path"]


def pending_path(output_path: str | os.PathLike[str]) -> Path:
    """``results.jsonl`` -> ``results.jsonl.pending.jsonl``, beside OUTPUT."""
    path = Path(output_path)
    return path.with_name(path.name + ".pending.jsonl")


def _load(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return entries
    for raw in data.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # a torn last line from a crash inside the write
        if not isinstance(line, dict):
            continue
        custom_id, response_id = line.get("custom_id"), line.get("id")
        if not isinstance(custom_id, str):
            continue
        if isinstance(response_id, str) and response_id:
            entries[custom_id] = response_id
        else:
            entries.pop(custom_id, None)
    return entries


def _line(custom_id: str, response_id: str | None) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "id": response_id}) + b"\n"


class PendingJournal:
    """custom_id -> background response id, kept in an append-only JSONL file.

    Use :meth:`open` (loads, compacts, opens for appending) and :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, str] = {}
        self._file: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<PendingJournal {str(self.path)!r} pending={len(self._entries)}>"

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, *, keep: Callable[[str], bool] | None = None) -> PendingJournal:
        """Load the file, keep the entries ``keep(custom_id)`` accepts, rewrite it, append after.

        The rewrite goes to a temporary file renamed over the old one, so a
        crash during it leaves one whole journal or the other.
        """
        entries = _load(self.path)
        if keep is not None:
            entries = {key: value for key, value in entries.items() if keep(key)}
        self._entries = entries
        if self.path.exists() or entries:
            temporary = self.path.with_name(self.path.name + ".tmp")
            with open(temporary, "wb") as file:
                file.write(b"".join(_line(key, value) for key, value in entries.items()))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> PendingJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Journal protocol of ratelane._engine.background -----------------------
    def pending(self, custom_id: str) -> str | None:
        """The response id created earlier for ``custom_id``, if any."""
        return self._entries.get(custom_id)

    @property
    def has_pending(self) -> bool:
        return bool(self._entries)

    def record(self, custom_id: str, response_id: str) -> None:
        """Write ``custom_id -> response_id`` and flush it to the OS before returning."""
        self._entries[custom_id] = response_id
        self._append(_line(custom_id, response_id))

    def forget(self, custom_id: str) -> None:
        """The next run creates ``custom_id`` again (its response failed or is gone)."""
        if self._entries.pop(custom_id, None) is not None:
            self._append(_line(custom_id, None))

    def _append(self, line: bytes) -> None:
        file = self._file
        if file is None:
            file = self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        file.write(line)
