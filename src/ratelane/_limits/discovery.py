"""Finding the request rate of a server that announces no limit, from its 429s.

Plain state over times in seconds (no asyncio), so the rules are tested on
simulated servers. The governor feeds it three events: an attempt admitted, an
answer observed, a 429; it answers with the pace to keep (``rpm``).

1. **Unlimited until the first 429.** A server that announces nothing and never
   refuses is not paced at all (the concurrency cap bounds the opening).
2. **First 429: start from what was accepted.** The pace becomes the rate of
   successful answers over the last ``window_s`` (with a margin), never less
   than ``floor_rpm``. A run whose first answers are all 429 (a fixed
   per-minute window already used up) starts at the floor, not at the tiny
   rate seen while the window was closed.
3. **Slow start.** Every ``step_s`` that saw successes, no 429 and a pace that
   was actually used (at least ``busy_fraction`` of it), the pace grows by
   ``slow_start_factor``: from 60 to 600 rpm in about 3 s.
4. **Then AIMD.** A 429 drawn by an attempt sent after the last cut, with a
   success since that cut, sets the pace to ``cut_factor`` times the pace in
   force when that attempt was sent, and ends slow start; afterwards the pace
   grows additively by ``increase_per_s`` of the cut pace per second. 429s from
   attempts sent before the cut (stragglers), and 429s with no success since
   the cut (a used-up fixed window: our rate is not the cause), cut nothing.
5. **A cut never leaves the pace above what the server took.** With at least
   half of ``history_s`` of successes behind it, a cut also caps the pace at
   ``margin`` times the success rate over the last ``history_s``. A fixed
   per-minute window (LiteLLM) accepts a burst far above its limit each time
   the minute turns, so the pace in force at a 429 says little; the successes
   over a minute say exactly what it allows.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Discovery", "DiscoveryTuning"]


@dataclass(frozen=True, slots=True)
class DiscoveryTuning:
    """The constants of discovery (see the module docstring for each rule)."""

    floor_rpm: float = 60.0
    window_s: float = 2.0
    margin: float = 0.9
    step_s: float = 0.5
    slow_start_factor: float = 2.0
    busy_fraction: float = 0.5
    cut_factor: float = 0.8
    increase_per_s: float = 0.03
    #: Without the send time of a 429-ed attempt, 429s this soon after a cut are stragglers.
    settle_s: float = 1.0
    min_rpm: float = 1.0
    #: The span over which the success rate caps a cut (rule 5): one fixed window.
    history_s: float = 60.0

    def __post_init__(self) -> None:
        if not (0 < self.cut_factor < 1 and 0 < self.margin <= 1 and self.slow_start_factor > 1):
            raise ValueError(
                "DiscoveryTuning needs 0 < cut_factor < 1, 0 < margin <= 1 and "
                "slow_start_factor > 1"
            )


class Discovery:
    """The pace for a server that announces no request limit (``rpm`` ``None``: unlimited)."""

    __slots__ = (
        "_answers",
        "_base_rpm",
        "_cut_at",
        "_first_success_at",
        "_history",
        "_rejected_in_step",
        "_rejections",
        "_step_at",
        "_step_rpm",
        "_successes",
        "_successes_in_step",
        "_successes_since_cut",
        "admitted",
        "rpm",
        "slow_start",
        "tuning",
    )

    def __init__(self, tuning: DiscoveryTuning | None = None) -> None:
        self.tuning = tuning if tuning is not None else DiscoveryTuning()
        self.rpm: float | None = None
        self.slow_start = True
        #: Attempts admitted in the current step (the governor counts them).
        self.admitted = 0
        self._cut_at = -math.inf
        self._base_rpm = 0.0
        self._step_at = 0.0
        self._step_rpm = 0.0  # the pace before the current step began
        self._successes_in_step = 0
        self._rejected_in_step = 0
        self._successes_since_cut = 0
        # Before the first 429 only: answer and 429 times over the last window.
        self._answers: deque[float] = deque()
        self._rejections: deque[float] = deque()
        # Successes per whole second over the last history_s: [second, count] pairs.
        self._history: deque[list[int]] = deque()
        self._first_success_at: float | None = None
        self._successes = 0  # in the whole run

    def answered(self, now: float, sent_at: float | None = None) -> bool:
        """One answer arrived, counted as a success until :meth:`rejected` says it was a 429.

        Only answers to attempts sent after the last cut count as evidence that
        the new pace gets through: the opening burst's answers say nothing of it.
        Returns True when the pace changed."""
        self._count_success(now, 1)
        if self.rpm is None:
            _slide(self._answers, now, self.tuning.window_s)
            return False
        self._successes_in_step += 1
        if sent_at is None or sent_at > self._cut_at:
            self._successes_since_cut += 1
        if now - self._step_at < self.tuning.step_s:
            return False
        return self._step(now)

    def _step(self, now: float) -> bool:
        tuning = self.tuning
        rpm = self.rpm
        assert rpm is not None
        elapsed = now - self._step_at
        # The current answer moves on to the new step (its 429, if any, comes next).
        successes = self._successes_in_step - 1
        used = self.admitted / max(1e-9, rpm / 60.0 * elapsed)
        grow = successes > 0 and self._rejected_in_step == 0 and used >= tuning.busy_fraction
        self._step_rpm = rpm
        self._step_at = now
        self.admitted = 0
        self._successes_in_step = 1
        self._rejected_in_step = 0
        if not grow:
            return False
        if self.slow_start:
            self.rpm = rpm * tuning.slow_start_factor
        else:
            self.rpm = rpm + tuning.increase_per_s * self._base_rpm * min(
                elapsed, 2 * tuning.step_s
            )
        return True

    def rejected(self, now: float, sent_at: float | None) -> bool:
        """A 429 for an attempt admitted at ``sent_at`` (``None``: unknown).

        Returns True when the pace changed."""
        tuning = self.tuning
        self._count_success(now, -1)  # answered() counted it
        if self.rpm is None:
            window = tuning.window_s
            _slide(self._rejections, now, window)
            _slide(self._answers, now, window, add=False)
            accepted = max(0, len(self._answers) - len(self._rejections)) / window * 60.0
            self.rpm = max(tuning.floor_rpm, accepted * tuning.margin)
            self._start(now)
            return True
        # answered() counted this answer as a success: it was not one.
        self._successes_in_step = max(0, self._successes_in_step - 1)
        sent = sent_at if sent_at is not None else now - tuning.settle_s
        if sent <= self._cut_at:
            # A straggler admitted at or before the cut, at an older pace: it says
            # nothing of this one (and answered() did not count it).
            return False
        self._successes_since_cut = max(0, self._successes_since_cut - 1)
        self._rejected_in_step += 1
        if self._successes_since_cut == 0:
            return False  # nothing got through since the cut: our rate is not the cause
        drawn = self._step_rpm if sent < self._step_at else self.rpm
        cut = tuning.cut_factor * drawn
        achieved = self.achieved_rpm(now)
        if achieved is not None:
            cut = min(cut, tuning.margin * achieved)
        self.rpm = max(tuning.min_rpm, cut)
        self.slow_start = False
        self._start(now)
        return True

    def achieved_rpm(self, now: float) -> float | None:
        """Successes per minute over the last ``history_s`` (``None`` with less
        than half of it seen since the first success)."""
        first = self._first_success_at
        history_s = self.tuning.history_s
        if first is None or now - first < history_s / 2:
            return None
        self._count_success(now, 0)
        span = min(history_s, now - first)
        return sum(count for _, count in self._history) / span * 60.0

    def _count_success(self, now: float, delta: int) -> None:
        """Add ``delta`` successes at ``now`` and forget seconds older than ``history_s``."""
        second = int(now)
        history = self._history
        self._successes += delta
        if (
            history
            and history[-1][0] == second
            and self._first_success_at is not None
            and self._successes > 0
        ):  # the same second as the last answer: nothing to forget
            history[-1][1] += delta
            return
        if self._successes <= 0:
            self._first_success_at = None  # every answer so far was a 429
        elif self._first_success_at is None:
            self._first_success_at = now
        if history and history[-1][0] == second:
            history[-1][1] += delta
        elif delta:
            history.append([second, delta])
        oldest = second - int(self.tuning.history_s)
        while history and history[0][0] < oldest:
            history.popleft()

    def _start(self, now: float) -> None:
        """A new pace from a 429: count successes afresh from now."""
        assert self.rpm is not None
        self._cut_at = now
        self._base_rpm = self.rpm
        self._step_rpm = self.rpm
        self._step_at = now
        self.admitted = 0
        self._successes_in_step = 0
        self._rejected_in_step = 0
        self._successes_since_cut = 0
        self._answers.clear()
        self._rejections.clear()

    def __repr__(self) -> str:
        pace = "unlimited" if self.rpm is None else f"{self.rpm:.0f}"
        phase = "slow-start" if self.slow_start else "aimd"
        return f"<Discovery rpm={pace} {phase}>"


def _slide(times: deque[float], now: float, window_s: float, *, add: bool = True) -> None:
    """Keep the last ``window_s`` seconds of event times (adding ``now``)."""
    if add:
        times.append(now)
    while times and now - times[0] > window_s:
        times.popleft()
