"""A virtual clock for asyncio: timers fire at once, so tests never wait for real seconds."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready.

    Minutes of rate limiting run in microseconds, and every wake-up time is
    exact, so assertions can be tight without ever depending on the machine.
    """

    def __init__(self) -> None:
        super().__init__()
        self.virtual_now = 0.0

    def time(self) -> float:
        return self.virtual_now

    def _run_once(self) -> None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not self._ready and scheduled:  # type: ignore[attr-defined]
            # A microsecond of progress even when the next timer is "now": float
            # rounding can make a limiter re-arm at the same instant forever.
            self.virtual_now = max(self.virtual_now + 1e-6, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def run(coro: Coroutine[Any, Any, T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout=3600))
    finally:
        loop.close()
