"""Remembering that an INPUT file was validated, so a resume does not read it twice.

Validating a million-line INPUT takes seconds (every line parsed, every
``custom_id`` checked for duplicates), and a resume used to repeat it each
time. After a successful validation the run writes a small JSON *sidecar*
beside OUTPUT (``<OUTPUT>.input-check.json``) holding INPUT's fingerprint and
the report's figures; the next run on the same OUTPUT skips validation when
INPUT's fingerprint still matches.

The fingerprint is git's answer to the same question (its index and "racily
clean" entries): ``(device, inode, size, mtime_ns, ctime_ns)``, plus a blake2b
digest of every byte only when the stat alone could be fooled. Any write to
INPUT changes its mtime and ctime; resetting the mtime (``touch -d``,
``rsync -t``, ``cp -p``) still changes the ctime, which no user can set;
replacing the file changes the inode. The one gap is a coarse clock: on a
filesystem that keeps whole seconds, an edit in the same second as the
validation keeps every field. So when INPUT's mtime or ctime lies within
``RACY_S`` of the moment validation began, the sidecar also holds a full
digest, checked on load. Always hashing would be simpler but costs ~0.2 s per
70 MB here (~1 s for a million lines), most of the resume-start budget.

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
_VERSION = 2
_CHUNK = 1 << 20


#: Seconds within which a file's timestamps might not have moved after an edit.
RACY_S = 2.0


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies one version of a file; ``digest`` is ``None`` unless it was racy."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    digest: str | None = None

    @classmethod
    def of(cls, path: StrPath, *, digest: bool = False) -> Fingerprint:
        """Stat ``path``; with ``digest``, also hash every byte (blake2b-128)."""
        with open(path, "rb", buffering=0) as file:
            stat = os.fstat(file.fileno())
            return cls(
                stat.st_dev,
                stat.st_ino,
                stat.st_size,
                stat.st_mtime_ns,
                stat.st_ctime_ns,
                _digest(file) if digest else None,
            )

    def racy(self, began_ns: int) -> bool:
        """The timestamps are too close to ``began_ns`` (wall clock) to prove no later edit."""
        return max(self.mtime_ns, self.ctime_ns) >= began_ns - int(RACY_S * 1e9)

    def same_stat(self, other: Fingerprint) -> bool:
        return (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns) == (
            other.device,
            other.inode,
            other.size,
            other.mtime_ns,
            other.ctime_ns,
        )


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
        remembered = Fingerprint(**saved["fingerprint"])
        now = Fingerprint.of(input_path)
        if not now.same_stat(remembered):
            return None
        if remembered.digest is not None and _digest_of(input_path) != remembered.digest:
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


def _digest_of(path: StrPath) -> str:
    with open(path, "rb", buffering=0) as file:
        return _digest(file)


def save_report(
    output_path: StrPath,
    input_path: StrPath,
    report: ValidationReport,
    before: Fingerprint,
    *,
    began_ns: int,
) -> None:
    """Remember that INPUT is valid: ``before`` is its fingerprint taken before validating,
    ``began_ns`` the wall-clock time (``time.time_ns()``) when validation began.

    Nothing is saved for an invalid report, or if INPUT changed while it was
    being validated. Failing to write the sidecar only costs a validation.
    """
    if not report.ok:
        return
    try:
        after = Fingerprint.of(input_path, digest=before.racy(began_ns))
    except OSError:
        return
    if not after.same_stat(before):
        return
    target = sidecar_path(output_path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    data = orjson.dumps(
        {
            "version": _VERSION,
            "input": os.path.realpath(input_path),
            "fingerprint": {
                "device": after.device,
                "inode": after.inode,
                "size": after.size,
                "mtime_ns": after.mtime_ns,
                "ctime_ns": after.ctime_ns,
                "digest": after.digest,
            },
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
