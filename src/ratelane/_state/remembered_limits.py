"""Learned rate limits remembered between runs, so a new run need not probe before fanning out.

One small JSON file in the user's cache directory (``$XDG_CACHE_HOME/ratelane/limits.json``,
else ``~/.cache/ratelane/limits.json``; ``RATELANE_CACHE_DIR`` overrides the folder).
Entries are keyed by a digest of (base URL, a digest of the API key,
organization, project, model): the file never holds the key, and a digest of
a digest cannot be turned back into one. Writes go to a temporary file that is
fsynced and renamed over the old one, so a crash leaves the old or the new
file, never half of one. A file that cannot be read is ignored (with a
warning) and replaced at the next write: a lost memory only costs a probe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["LimitMemory", "RememberedLimits", "default_memory_path", "limits_key"]

logger = logging.getLogger("ratelane")

#: Limits older than this are forgotten: accounts change tier.
MAX_AGE_S = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RememberedLimits:
    rpm: float | None
    tpm: float | None
    learned_at: float


def default_memory_path() -> Path:
    folder = os.environ.get("RATELANE_CACHE_DIR")
    if folder:
        return Path(folder) / "limits.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ratelane" / "limits.json"


def limits_key(
    *, base_url: str, api_key: str, organization: str | None, project: str | None, model: str
) -> str:
    key_digest = hashlib.blake2b(api_key.encode(), digest_size=16).hexdigest()
    parts = (base_url.rstrip("/"), key_digest, organization or "", project or "", model)
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


class LimitMemory:
    """Read and write remembered limits; ``clock`` is injectable for tests."""

    def __init__(self, path: str | Path | None = None, *, clock: Any = time.time) -> None:
        self.path = Path(path) if path is not None else default_memory_path()
        self._clock = clock

    def __repr__(self) -> str:
        return f"<LimitMemory {str(self.path)!r}>"

    def _load(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            logger.warning("ignoring the remembered rate limits in %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def recall(self, key: str) -> RememberedLimits | None:
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        learned_at = entry.get("learned_at")
        if not isinstance(learned_at, int | float) or self._clock() - learned_at > MAX_AGE_S:
            return None
        rpm, tpm = entry.get("rpm"), entry.get("tpm")
        return RememberedLimits(
            rpm=float(rpm) if isinstance(rpm, int | float) and rpm > 0 else None,
            tpm=float(tpm) if isinstance(tpm, int | float) and tpm > 0 else None,
            learned_at=float(learned_at),
        )

    def remember(self, key: str, *, rpm: float | None, tpm: float | None) -> None:
        """Store the limits for ``key``; failures are logged, never raised."""
        if rpm is None and tpm is None:
            return
        now = self._clock()
        data = {
            name: entry
            for name, entry in self._load().items()
            if isinstance(entry, dict) and now - entry.get("learned_at", 0) <= MAX_AGE_S
        }
        data[key] = {"rpm": rpm, "tpm": tpm, "learned_at": now}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".limits-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(orjson.dumps(data))
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            logger.warning("could not remember the rate limits in %s: %s", self.path, exc)
