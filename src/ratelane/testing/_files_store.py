"""Files of the fake Batch API, kept on disk in one temporary directory per server.

Uploads are streamed to disk in chunks and result files are written there by
the batches, so a 200,000-line batch costs disk, not memory. The directory is
removed when the server closes (or, failing that, when the store is collected).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader

__all__ = ["FileStore", "StoredFile", "TooLarge"]

_CHUNK = 1 << 16
#: Files of purpose ``batch`` expire after 30 days unless told otherwise.
_EXPIRES_S = 30 * 24 * 3600


class TooLarge(Exception):
    """An upload went past the size limit; the partial file is already removed."""


@dataclass(slots=True)
class StoredFile:
    """One file: its wire fields, where its bytes are, and their blake2b-128 digest."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path
    digest: str

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.created_at + _EXPIRES_S,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """Files by id; only the server's event loop touches it (no lock)."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._files: dict[str, StoredFile] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"FileStore(files={len(self._files)}, root={self._root})"

    @property
    def root(self) -> Path:
        """The temporary directory, created on first use."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="ratelane-fake-files-"))
            self._finalizer = weakref.finalize(
                self, shutil.rmtree, str(self._root), ignore_errors=True
            )
        return self._root

    def new_path(self, name: str) -> Path:
        return self.root / name

    async def receive(
        self, part: BodyPartReader, *, file_id: str, filename: str, max_bytes: int
    ) -> StoredFile:
        """Stream one multipart part to disk; raise :class:`TooLarge` past ``max_bytes``."""
        path = self.new_path(file_id)
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        with path.open("wb") as out:
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    out.close()
                    path.unlink(missing_ok=True)
                    raise TooLarge(size)
                digest.update(chunk)
                out.write(chunk)
        return StoredFile(file_id, filename, "", size, int(time.time()), path, digest.hexdigest())

    def add(self, stored: StoredFile) -> StoredFile:
        self._files[stored.id] = stored
        return stored

    def adopt(self, path: Path, *, file_id: str, filename: str, purpose: str) -> StoredFile:
        """Register a file a batch wrote (its digest is not needed and left empty)."""
        size = path.stat().st_size
        return self.add(StoredFile(file_id, filename, purpose, size, int(time.time()), path, ""))

    def get(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def oldest_first(self) -> list[StoredFile]:
        """Every file, in the order they were created (uploads and batch results alike)."""
        return list(self._files.values())

    def delete(self, file_id: str) -> bool:
        stored = self._files.pop(file_id, None)
        if stored is None:
            return False
        # A running batch keeps its input open: on POSIX its handle stays valid; where an
        # open file cannot be removed (Windows), the directory goes when the server closes.
        with contextlib.suppress(OSError):
            stored.path.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        self._files.clear()
        if self._finalizer is not None:
            self._finalizer()
        self._root = None
        self._finalizer = None
