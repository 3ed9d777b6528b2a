"""Options of the long-running answer modes: background lifecycle and SSE streaming.

Both are frozen values validated once, like :class:`Latency` and :class:`Faults`.
Outcomes and stream faults are drawn from their own seeded generators, so turning
them on never shifts the faults or latencies drawn for other requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FAILED_MARKER",
    "INCOMPLETE_MARKER",
    "STREAM_FAULT_HEADER",
    "STREAM_FAULT_KINDS",
    "Background",
    "StreamFaultKind",
    "Streaming",
]

#: Input text containing this makes a background (or streamed) response end ``failed``.
FAILED_MARKER = "[fake:failed]"
#: Input text containing this makes it end ``incomplete`` with half its output.
INCOMPLETE_MARKER = "[fake:incomplete]"

#: Request header forcing one stream fault on one ``stream: true`` request.
STREAM_FAULT_HEADER = "x-fake-stream-fault"
StreamFaultKind = Literal["cut", "error", "failed"]
#: ``cut``: the connection closes mid-stream, no terminal event; ``error``: a nested
#: ``error`` event then ``response.failed``; ``failed``: ``response.failed`` alone.
STREAM_FAULT_KINDS: tuple[StreamFaultKind, ...] = ("cut", "error", "failed")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _probabilities(owner: str, pairs: dict[str, float]) -> None:
    for name, value in pairs.items():
        if isinstance(value, bool) or not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(f"{owner}.{name} must be a probability between 0 and 1, got {value!r}")
    if sum(pairs.values()) > 1.0 + 1e-9:
        raise ValueError(
            f"{owner} probabilities sum to {sum(pairs.values()):g}, above 1. "
            "HINT: at most one outcome applies to a response; lower some of them."
        )


@dataclass(frozen=True, slots=True)
class Background:
    """How a ``background: true`` response lives: ``queued -> in_progress -> terminal``.

    It is ``queued`` for ``queued_s`` after the create, then ``in_progress`` for
    ``in_progress_s``, then terminal: ``completed``, or ``failed`` /
    ``incomplete`` with probabilities ``failed`` / ``incomplete`` (drawn once
    at create) or when the input text contains :data:`FAILED_MARKER` /
    :data:`INCOMPLETE_MARKER`. Times follow the server's ``clock``, so a test
    with an injected clock moves responses along without waiting.
    """

    queued_s: float = 0.05
    in_progress_s: float = 0.2
    failed: float = 0.0
    incomplete: float = 0.0

    def __post_init__(self) -> None:
        _non_negative("Background.queued_s", self.queued_s)
        _non_negative("Background.in_progress_s", self.in_progress_s)
        _probabilities("Background", {"failed": self.failed, "incomplete": self.incomplete})


@dataclass(frozen=True, slots=True)
class Streaming:
    """How ``stream: true`` answers are paced and broken.

    The first ``response.output_text.delta`` comes ``first_token_s`` after the
    request (``None``: the server's latency model, ``Latency.seconds`` with
    its spread), then one delta per ``chunk_chars`` characters, each after
    ``Latency.per_output_token_s`` per token it carries. Stream faults, drawn
    once per streamed request (or forced with the ``x-fake-stream-fault``
    header): ``cut`` closes the connection after about half the deltas;
    ``error`` sends a nested ``error`` event and ``response.failed``;
    ``failed`` sends ``response.failed`` alone.
    """

    first_token_s: float | None = None
    chunk_chars: int = 4
    cut: float = 0.0
    error: float = 0.0
    failed: float = 0.0

    def __post_init__(self) -> None:
        if self.first_token_s is not None:
            _non_negative("Streaming.first_token_s", self.first_token_s)
        if isinstance(self.chunk_chars, bool) or not (
            isinstance(self.chunk_chars, int) and self.chunk_chars >= 1
        ):
            raise ValueError(
                f"Streaming.chunk_chars must be an integer >= 1, got {self.chunk_chars!r}"
            )
        _probabilities("Streaming", {"cut": self.cut, "error": self.error, "failed": self.failed})

    def pick(self, draw: float) -> StreamFaultKind | None:
        """The stream fault for a uniform ``draw`` in [0, 1), or ``None``."""
        threshold = 0.0
        for kind, probability in zip(
            STREAM_FAULT_KINDS, (self.cut, self.error, self.failed), strict=True
        ):
            threshold += probability
            if draw < threshold:
                return kind
        return None

    @property
    def any_random(self) -> bool:
        return bool(self.cut or self.error or self.failed)
