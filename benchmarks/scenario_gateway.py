"""Scenario 8, behind a gateway: how fast does ratelane find a 1,200 rpm limit it is not
told in OpenAI's words?

600 requests against a fake server limited to R = 1,200 rpm that

- (a) announces the limit in LiteLLM's per-key dialect (``x-ratelimit-api_key-*``),
- (b) announces nothing (``--no-rate-limit-headers``),
- (c) announces nothing and counts per calendar minute like LiteLLM, with the
  first minute already used up: every first answer is a 429 until it turns.

(a) and (b) refill continuously, as OpenAI does, so a burst cannot pass for a
pace; (c) uses LiteLLM's fixed minute. The figure is the time from the first
request until the steady state: the admitted rate (server ledger) at or above
90 % of R in every 1-second window for ``HOLD_S`` seconds, so an opening burst
followed by a stall does not count; plus the total time and the 429 count. A
case that has not finished after the cap is stopped and reported as such.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Any

from _bench import (
    Context,
    FakeServer,
    client_spec,
    finish_client,
    fmt,
    report,
    start_client,
    target,
    windows,
)

NAME = "gateway"
RPM = 1_200
SHARE = 0.9
LATENCY_S = 0.2
SIGMA = 0.3
SLOT_S = 0.1
CONCURRENCY = 256
TARGET_S = 10.0
HOLD_S = 5.0
CASES = {
    "litellm_key": "(a) LiteLLM per-key headers",
    "unannounced": "(b) no rate-limit headers",
    "used_window": "(c) no headers, first minute used up",
}


def time_to_share(
    series: list[int], limit_per_s: float, *, hold_s: float = HOLD_S, share: float = SHARE
) -> float | None:
    """Seconds from the first request until the steady state: the start of the
    first stretch of ``hold_s`` seconds in which every 1-second window (slots of
    ``SLOT_S``) admits at least ``share`` of the limit; ``None`` if never."""
    end_s = len(series) * SLOT_S
    counts = list(windows(series, SLOT_S, 0.0, end_s))
    needed = round((hold_s - 1.0) / SLOT_S) + 1  # window starts within the stretch
    run = 0
    for index, (_, count) in enumerate(counts):
        run = run + 1 if count >= share * limit_per_s - 1e-9 else 0
        if run >= needed:
            return counts[index - needed + 1][0]
    return None


def _server_options(case: str, rpm: int, turn_in_s: float, latency_s: float) -> dict[str, Any]:
    base: dict[str, Any] = {"rpm": rpm, "latency": latency_s, "latency_sigma": SIGMA, "seed": 8}
    if case == "litellm_key":
        return {**base, "limit_dialect": "litellm-key"}
    if case == "unannounced":
        return {**base, "no_rate_limit_headers": True}
    return {
        **base,
        "no_rate_limit_headers": True,
        "window": "fixed-minute",
        "window_offset_s": 60.0 - turn_in_s,
        "first_window_used": True,
    }


def _measure(
    ctx: Context, case: str, *, requests: int, rpm: int, turn_in_s: float, cap_s: float
) -> dict[str, Any]:
    options = _server_options(case, rpm, turn_in_s, ctx.pick(LATENCY_S, LATENCY_S, smoke=0.02))
    stopped = False
    client: dict[str, Any] = {}
    with FakeServer(ctx.placement, **options) as server:
        started = time.monotonic()
        process = start_client(
            client_spec(
                server,
                "ratelane",
                concurrency=CONCURRENCY,
                items={"kind": "ping", "n": requests},
            )
        )
        try:
            client = finish_client(process, timeout_s=cap_s)
        except subprocess.TimeoutExpired:
            stopped = True
            process.terminate()
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                finish_client(process, timeout_s=30)
        wall_s = time.monotonic() - started
        ledger = server.ledger(bucket_s=SLOT_S)
    series = [int(count) for count in ledger["rate_series"]]
    reached = time_to_share(series, rpm / 60, hold_s=ctx.pick(HOLD_S, HOLD_S, smoke=1.0))
    admitted = sum(series)
    data = {
        "time_to_90pct_s": reached,
        "wall_s": client.get("wall_s", wall_s),
        "stopped_at_cap": stopped,
        "succeeded": client.get("succeeded", admitted),
        "failed": client.get("failed"),
        "rate_limited": int(ledger["rate_limited"]),
        "server_requests": int(ledger["total"]),
        "learned_rpm": client.get("learned_rpm"),
        "rate_series_per_s": [
            sum(series[i : i + round(1 / SLOT_S)]) for i in range(0, len(series), round(1 / SLOT_S))
        ],
    }
    ctx.log(
        f"{case}: 90% of {rpm} rpm after {fmt(reached, 1)} s, total {data['wall_s']:.1f} s"
        f"{' (stopped at the cap)' if stopped else ''}, {data['rate_limited']} 429s"
    )
    return data


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(120, 600, smoke=20)
    rpm = ctx.pick(RPM, RPM, smoke=6_000)
    turn_in_s = ctx.pick(5.0, 10.0, smoke=0.3)
    cap_s = ctx.pick(30.0, 480.0, smoke=1.5)
    figures: dict[str, Any] = {"rpm": rpm, "requests": requests, "cap_s": cap_s}
    rows = []
    for case, label in CASES.items():
        data = _measure(ctx, case, requests=requests, rpm=rpm, turn_in_s=turn_in_s, cap_s=cap_s)
        figures[case] = data
        total = f"{data['wall_s']:.1f}" + (" (stopped at cap)" if data["stopped_at_cap"] else "")
        rows.append(
            [
                label,
                "never" if data["time_to_90pct_s"] is None else f"{data['time_to_90pct_s']:.1f}",
                total,
                f"{data['rate_limited']}/{data['server_requests']}",
                f"{data['succeeded']}/{requests}",
            ]
        )
    targets = [
        target(
            f"90% of an unannounced-in-OpenAI-words limit, {label}",
            f"<= {TARGET_S:g} s",
            "never" if figures[case]["time_to_90pct_s"] is None
            else f"{figures[case]['time_to_90pct_s']:.1f} s",
            figures[case]["time_to_90pct_s"] is not None
            and figures[case]["time_to_90pct_s"] <= TARGET_S,
        )
        for case, label in CASES.items()
    ]  # fmt: skip
    return report(
        NAME,
        f"8. Behind a gateway ({requests} requests, {rpm} rpm not announced in OpenAI's words)",
        config={
            "rpm": rpm,
            "requests": requests,
            "concurrency": CONCURRENCY,
            "latency_s": LATENCY_S,
            "latency_sigma": SIGMA,
            "used_window_turns_after_s": turn_in_s,
            "cap_s": cap_s,
        },
        columns=["case", f"to {SHARE:.0%} of R (s)", "total s", "429/total", "succeeded"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=[
            f"time to {SHARE:.0%}: from the server's first request to the start of the first "
            f"{HOLD_S:g} s in which every 1-s window admits that share of R (ledger, 0.1 s "
            "slots)",
            f"(c): the first minute is used up and turns {turn_in_s:g} s after the server "
            "starts; after the turn the whole minute's budget is free (a fixed window)",
            f"a case still running after {cap_s:g} s is stopped; its total is the cap",
        ],
    )
