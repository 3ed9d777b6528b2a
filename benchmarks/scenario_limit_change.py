"""Scenario 4, limit change: the server halves its request limit mid-run, then
restores it (``POST /_fake/limits``); how fast does ratelane follow?

Time to adapt, per direction: seconds from the change until the admitted rate
(sliding 1-second windows over the ledger's 10 ms series) is within 5% of the
new limit, with no 429, and stays so for the next 2 seconds. The 429s come
from polling the ledger every 0.1 s. The change is timed from the server's first request.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from typing import Any

import _plots
from _bench import (
    Context,
    FakeServer,
    LedgerPoller,
    client_spec,
    finish_client,
    report,
    start_client,
    target,
    windows,
)

NAME = "limit_change"
RPM = 3_000
LATENCY_S = 0.5
SIGMA = 0.5
CONCURRENCY = 256
SLOT_S = 0.01
TOLERANCE = 0.05
HOLD_S = 2.0
TARGET_S = 5.0


def adaptation_s(
    admitted: list[int],
    rejected: list[int],
    change_s: float,
    phase_end_s: float,
    limit_rpm: float,
) -> float | None:
    """Seconds from ``change_s`` until every 1-s window starting in the next ``HOLD_S``
    seconds admits within ``TOLERANCE`` of ``limit_rpm`` with no 429; ``None`` if that
    never happens within the phase."""
    goal = limit_rpm / 60
    good = [
        (start, abs(count - goal) <= TOLERANCE * goal and refused == 0)
        for (start, count), (_, refused) in zip(
            windows(admitted, SLOT_S, change_s, phase_end_s),
            windows(rejected, SLOT_S, change_s, phase_end_s),
            strict=False,
        )
    ]
    if not good:
        return None
    last_start = good[-1][0]
    for index, (start, _) in enumerate(good):
        if start + HOLD_S > last_start:
            return None  # not enough of the phase left to call it stable
        until = start + HOLD_S
        held = itertools.takewhile(lambda window, until=until: window[0] <= until, good[index:])
        if all(ok for _, ok in held):
            return start - change_s
    return None


def rejected_series(poller: LedgerPoller, first_s: float, slots: int) -> list[int]:
    """429s per 10 ms slot, each poll's new 429s put in the slot of that poll."""
    series = [0] * slots
    for before, after in zip(poller.samples, poller.samples[1:], strict=False):
        slot = math.floor((after.time_s - first_s) / SLOT_S)
        if 0 <= slot < slots:
            series[slot] += after.rate_limited - before.rate_limited
    return series


def rejected_between(poller: LedgerPoller, first_s: float, start: float, end: float) -> int:
    """429s the poller saw between offsets ``start`` and ``end`` (to within one poll)."""
    inside = [s for s in poller.samples if start <= s.time_s - first_s <= end]
    before = [s for s in poller.samples if s.time_s - first_s < start]
    if not inside:
        return 0
    base = before[-1].rate_limited if before else 0
    return inside[-1].rate_limited - base


def run(ctx: Context) -> dict[str, Any]:
    phase_s = ctx.pick(3.0, 20.0, smoke=0.5)
    rpm = ctx.pick(6_000, RPM)
    # Enough requests to outlast the three phases; the client is stopped after them.
    requests = math.ceil((rpm / 60 * phase_s * 2 + rpm / 120 * phase_s) * 1.15)
    options = {
        "rpm": rpm,
        "latency": ctx.pick(LATENCY_S, LATENCY_S, smoke=0.05),
        "latency_sigma": SIGMA,
        "seed": 4,
    }
    changes: list[tuple[str, float, float]] = []
    with FakeServer(ctx.placement, **options) as server:
        with LedgerPoller(server, interval_s=0.1, limit_s=phase_s * 3 + 120) as poller:
            process = start_client(
                client_spec(
                    server,
                    "ratelane",
                    concurrency=CONCURRENCY,
                    items={"kind": "ping", "n": requests},
                )
            )
            try:
                if not poller.started.wait(60):
                    raise RuntimeError("the client sent no request within 60 s")
                first_s = float(server.ledger()["first_s"])
                for direction, limit, at_s in (
                    ("down", rpm / 2, phase_s),
                    ("up", rpm, 2 * phase_s),
                ):
                    time.sleep(max(0.0, first_s + at_s - time.monotonic()))
                    before = time.monotonic()
                    server.set_limits(rpm=limit)
                    changes.append((direction, limit, (before + time.monotonic()) / 2 - first_s))
                    ctx.log(f"limit {direction} to {limit:g} rpm at {changes[-1][2]:.2f} s")
                time.sleep(max(0.0, first_s + 3 * phase_s + 0.5 - time.monotonic()))
            finally:
                process.terminate()  # the remaining requests do not matter
                with contextlib.suppress(RuntimeError, OSError):
                    finish_client(process, timeout_s=30)
        series = server.ledger(bucket_s=SLOT_S)["rate_series"]

    figures: dict[str, Any] = {"rpm": rpm, "phase_s": phase_s}
    rows = []
    targets = []
    ends = {"down": 2 * phase_s, "up": 3 * phase_s}
    refused = rejected_series(poller, first_s, len(series))
    for direction, limit, at_s in changes:
        adapt = adaptation_s(series, refused, at_s, ends[direction], limit)
        rejected = rejected_between(poller, first_s, at_s - 1.0, at_s + TARGET_S)
        rejected_phase = rejected_between(poller, first_s, at_s, ends[direction])
        figures[direction] = {
            "new_rpm": limit,
            "change_at_s": round(at_s, 3),
            "adapt_s": adapt,
            "rate_limited_around_change": rejected,
            "rate_limited_in_phase": rejected_phase,
        }
        rows.append(
            [
                f"{'halved' if direction == 'down' else 'restored'} to {limit:g} rpm",
                "not within the phase" if adapt is None else f"{adapt:.2f} s",
                str(rejected),
                str(rejected_phase),
            ]
        )
        targets.append(
            target(
                f"adapt to a {'halved' if direction == 'down' else 'restored'} limit",
                f"<= {TARGET_S:g} s",
                "never" if adapt is None else f"{adapt:.2f} s",
                adapt is not None and adapt <= TARGET_S,
            )
        )
    per_second = [sum(series[i : i + 100]) for i in range(0, len(series), 100)]
    figures["rate_series"] = per_second
    before_change = per_second[2 : int(phase_s)]
    figures["first_phase_fraction"] = (
        sum(before_change) / len(before_change) * 60 / rpm if before_change else None
    )
    end_s = 3 * phase_s
    steps_t = [0.0, *(at for _, _, at in changes), end_s]
    steps_v = [rpm / 60, *(limit / 60 for _, limit, _ in changes), rpm / 60]
    half = [sum(series[i : i + 50]) * 2 for i in range(0, min(len(series), int(end_s * 100)), 50)]
    plot = _plots.rate_against_limit(
        ctx.out_dir / "limit_change.png",
        title=f"Limit halved then restored ({rpm} rpm -> {rpm // 2} -> {rpm})",
        ylabel="requests admitted per second (0.5 s buckets)",
        lines={"ratelane": ([i * 0.5 for i in range(len(half))], [float(v) for v in half])},
        limit=(steps_t, steps_v),
    )
    return report(
        NAME,
        f"4. Limit change ({rpm} rpm halved at {phase_s:g} s, restored at {2 * phase_s:g} s)",
        config={
            "rpm": rpm,
            "phase_s": phase_s,
            "latency_s": LATENCY_S,
            "latency_sigma": SIGMA,
            "concurrency": CONCURRENCY,
            "adapted": f"1-s admitted rate within {TOLERANCE:.0%} of the new limit for "
            f"{HOLD_S:g} s",
        },
        columns=["change", "time to adapt", "429s -1..+5 s", "429s in phase"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=[
            "time to adapt is counted from the limit change itself, not from the first "
            "response header showing it (answers carry headers decided at admission, "
            f"up to a latency of ~{LATENCY_S:g} s earlier), so it is an upper bound",
        ],
        plots=[plot] if plot else [],
    )
