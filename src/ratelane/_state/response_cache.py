"""A response cache in one SQLite file: identical requests are answered without sending.

Contract:

* The key is a digest of (endpoint path, canonical body): the body's JSON with
  sorted keys, so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` are one request.
  Only successful answers are stored, as the exact bytes the server sent.
* Meant for deterministic prompts (temperature 0, fixed seeds): the cache
  cannot know whether a second answer would differ, and it never expires.
* Safe with many readers and one writer at a time across processes: the file
  is in WAL mode and waits (``busy_timeout``) instead of failing on a lock.
* Never fatal. A file that is not a database, or breaks mid-run, is reported
  once (``problem``, a WARNING) and the run carries on as if there were no cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ResponseCache", "cache_key"]

logger = logging.getLogger("ratelane")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    body BLOB NOT NULL,
    stored_at REAL NOT NULL
)
"""


def cache_key(path: str, body: Mapping[str, Any]) -> str:
    """blake2b-256 of ``path`` and the body's canonical JSON (sorted keys), as hex."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(path.encode())
    digest.update(b"\0")
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


class ResponseCache:
    """Lookups and stores against one cache file; counts hits, misses and stores."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.problem: str | None = None
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            with contextlib.suppress(sqlite3.OperationalError):
                # Busy when another process switches the same new file at this moment;
                # the file ends up in WAL either way, and every other statement waits.
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._db = db
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)

    def __repr__(self) -> str:
        state = f"problem={self.problem!r}" if self.problem else "ok"
        return (
            f"<ResponseCache {str(self.path)!r} {state} hits={self.hits} misses={self.misses} "
            f"stores={self.stores}>"
        )

    @property
    def usable(self) -> bool:
        return self._db is not None

    def _disable(self, exc: BaseException) -> None:
        self.problem = f"the response cache {self.path} is unusable ({exc}); running without it"
        logger.warning("%s. HINT: delete the file to start a fresh cache", self.problem)
        if self._db is not None:
            self._db.close()
        self._db = None

    def get(self, path: str, body: Mapping[str, Any]) -> bytes | None:
        """The stored answer to this request, or None."""
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                "SELECT body FROM responses WHERE key = ?", (cache_key(path, body),)
            ).fetchone()
        except sqlite3.Error as exc:
            self._disable(exc)
            return None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return bytes(row[0])

    def put(self, path: str, body: Mapping[str, Any], raw_response: bytes) -> None:
        """Store a successful answer (the exact bytes received)."""
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, path, body, stored_at) VALUES (?, ?, ?, ?)",
                (cache_key(path, body), path, raw_response, time.time()),
            )
        except sqlite3.Error as exc:
            self._disable(exc)
            return
        self.stores += 1

    def __len__(self) -> int:
        if self._db is None:
            return 0
        try:
            (count,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        except sqlite3.Error as exc:
            self._disable(exc)
            return 0
        return int(count)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
