"""OpenAI's rate-limit duration strings (``1s``, ``6m0s``, ``20ms``, ``1m30.5s``).

The reset headers use Go's ``time.Duration`` text form. Both the client (to read
them) and the fake server (to write them) go through this module so the two can
never drift apart.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
# "ms" must be tried before "m", or "12ms" would read as 12 minutes and a stray "s".
_GROUP = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|μs|ns|h|m|s)")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> float | None:
    """Seconds in a duration header value, or ``None`` if it is not one.

    Accepts Go-style groups (``4m12.172s``, ``23h47m36.648s``, ``12ms``), a
    bare number of seconds (``64``, ``0``, sent by some compatible servers) and
    ``0``/``0s``. Anything else, negative values included, gives ``None``:
    callers treat an unreadable header as absent rather than failing a request.
    """
    value = text.strip()
    if not value:
        return None
    if _PLAIN_NUMBER.fullmatch(value):
        return float(value)
    total = 0.0
    position = 0
    for match in _GROUP.finditer(value):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(value):
        return None
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the way OpenAI does: ``0s``, ``12ms``, ``1s``, ``6m0s``, ``1h2m3.5s``.

    Below one second the value is whole milliseconds (``120ms``); from one
    second up it is ``[Nh][Nm]S[.fff]s`` with at most three decimals and no
    trailing zeros, and a whole-minute value keeps its trailing ``0s``.
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        millis = round(seconds * 1000)
        return f"{millis}ms" if millis < 1000 else "1s"
    millis_total = round(seconds * 1000)
    hours, rest = divmod(millis_total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_seconds, millis = divmod(rest, 1000)
    text = f"{whole_seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
