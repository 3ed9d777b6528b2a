"""Which shard a request belongs to, the same on every machine.

One huge input is split across N processes or hosts by ``custom_id``: the
process running shard ``I/N`` takes the lines whose :func:`shard_of` is ``I``.
The hash is fixed forever, not Python's ``hash()`` (randomised per process)::

    shard_of(custom_id, N) = int.from_bytes(blake2b(custom_id.encode("utf-8")).digest()[:8],
                                            "big") % N

(unkeyed BLAKE2b with its default 64-byte digest, so ``b2sum`` computes the same.)
Each shard writes its own OUTPUT; ``ratelane merge`` puts them together.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from ratelane._core.errors import ConfigurationError

from .input import iter_batch_requests

__all__ = ["Shard", "shard_lines", "shard_of"]

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def shard_of(custom_id: str, count: int) -> int:
    """The shard (``0 <= shard < count``) that ``custom_id`` belongs to; see the module."""
    if count < 1:
        raise ConfigurationError(f"a shard count must be at least 1, got {count}")
    # surrogatepass: a JSON "\ud800" is a valid custom_id string without a UTF-8 form.
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (``Shard.parse("0/4")``: the first of four)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigurationError(
                f"shard {self.index}/{self.count} does not exist. "
                f"HINT: I/N with 0 <= I < N, e.g. 0/{max(self.count, 2)} ... "
                f"{max(self.count, 2) - 1}/{max(self.count, 2)}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> ``Shard(I, N)``; a :class:`ConfigurationError` with a hint otherwise."""
        match = _SHARD.fullmatch(text)
        if match is None:
            raise ConfigurationError(
                f"not a shard: {text!r}. HINT: I/N, e.g. --shard 0/4 on the first of four "
                "machines, 3/4 on the last"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def __contains__(self, custom_id: object) -> bool:
        return isinstance(custom_id, str) and shard_of(custom_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_lines(path: str | os.PathLike[str], shard: Shard) -> int:
    """How many requests of the validated Batch file ``path`` belong to ``shard``
    (one pass over INPUT; ``ratelane run --shard`` counts its lines with it)."""
    count = 0
    for _ in iter_batch_requests(path, skip=lambda custom_id: custom_id not in shard):
        count += 1
    return count
