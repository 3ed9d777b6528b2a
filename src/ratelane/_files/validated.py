"""Remembering that an INPUT file was validated, so a resume does not read it twice.

Validating a million-line INPUT takes seconds (every line parsed, every
``custom_id`` checked for duplicates), and a resume used to repeat it each
time. After a successful validation the run writes a small JSON *sidecar*
beside OUTPUT (``<OUTPUT>.input-check.json``) holding INPUT's fingerprint and
the report's figures; the next run on the same OUTPUT skips validation when
INPUT's fingerprint still matches.

The fingerprint is ``(size, mtime_ns, blake2b of every byte)``. Size and
mtime alone miss an edit that keeps the size within the clock's resolution
(or a ``touch -d`` / ``rsync -t`` that restores the time); a digest of only
the first and last megabyte misses an edit in the middle, the usual case when
someone fixes one line. A full blake2b costs about 0.3 s a gigabyte here
(measured in ``benchmarks/cli_scale.py``'s resume: ~0.1 s for the
330 MB million-line file), a small part of the seconds validation costs, so
the digest covers every byte. It is only computed when size and mtime already
match.

The sidecar is written atomically (temporary file, ``fsync``, ``os.replace``)
and any sidecar that cannot be read, or was written by another format
version, means "validate again": it is a cache, never a source of truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from .input import ValidationReport

__all__ = ["Fingerprint", "load_report", "save_report", "sidecar_path"]

StrPath = str | os.PathLike[str]

SIDECAR_SUFFIX = ".input-check.json"
_VERSION = 1
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies one version of a file: size, mtime and (lazily) a digest."""

    size: int
    mtime_ns: int
    digest: str

    @classmethod
    def of(cls, path: StrPath) -> Fingerprint:
        """Stat and hash ``path`` (every byte, blake2b-128)."""
        with open(path, "rb", buffering=0) as file:
            stat = os.fstat(file.fileno())
            return cls(stat.st_size, stat.st_mtime_ns, _digest(file))

    def same_stat(self, path: StrPath) -> bool:
        """``path`` still has this size and mtime (no digest computed)."""
        try:
            stat = os.stat(path)
        except OSError:
            return False
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


def _digest(file: io.FileIO) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    while True:
        count = file.readinto(buffer)
        if not count:
            break
        hasher.update(view[:count])
    return hasher.hexdigest()


def sidecar_path(output_path: StrPath) -> Path:
    """``out.jsonl`` -> ``out.jsonl.input-check.json``, beside OUTPUT."""
    return Path(os.fspath(output_path) + SIDECAR_SUFFIX)


def load_report(output_path: StrPath, input_path: StrPath) -> ValidationReport | None:
    """The report saved for INPUT by an earlier run on OUTPUT, if INPUT is unchanged."""
    try:
        saved = orjson.loads(sidecar_path(output_path).read_bytes())
        if saved.get("version") != _VERSION or saved["input"] != os.path.realpath(input_path):
            return None
        remembered = Fingerprint(int(saved["size"]), int(saved["mtime_ns"]), str(saved["digest"]))
        if not remembered.same_stat(input_path) or Fingerprint.of(input_path) != remembered:
            return None
        return ValidationReport(
            path=os.fspath(input_path),
            lines=int(saved["lines"]),
            problems=(),
            problem_count=0,
            estimated_tokens=int(saved["estimated_tokens"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_report(
    output_path: StrPath, input_path: StrPath, report: ValidationReport, fingerprint: Fingerprint
) -> None:
    """Remember that INPUT (as ``fingerprint``, taken *before* validating) is valid.

    Nothing is saved for an invalid report, or if INPUT changed while it was
    being validated. Failing to write the sidecar only costs a validation.
    """
    if not report.ok or not fingerprint.same_stat(input_path):
        return
    target = sidecar_path(output_path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    data = orjson.dumps(
        {
            "version": _VERSION,
            "input": os.path.realpath(input_path),
            "size": fingerprint.size,
            "mtime_ns": fingerprint.mtime_ns,
            "digest": fingerprint.digest,
            "lines": report.lines,
            "estimated_tokens": report.estimated_tokens,
        },
        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
    )
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
