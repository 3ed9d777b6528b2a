"""Scenario 2, request-limit bound: the server allows R requests/min, answers take
lognormal time (median 0.5 s); how close to R does each client get, and at what
cost in 429s?

The achieved rate is the server's count of admitted (non-429) requests per
second over the steady state: the run without its first and last seconds.
ratelane is not told the limit; it learns it from the response headers.
"""

from __future__ import annotations

from typing import Any

import _plots
from _bench import (
    Context,
    limit_row,
    limit_targets,
    limited_run,
    pct,
    report,
    steady,
    trim_idle,
)

NAME = "request_limit"
RPM = 3_000
LATENCY_S = 0.5
SIGMA = 0.5
CONCURRENCY = 256
HEAD_S = 2
TAIL_S = 1
LABELS = {"ratelane": "ratelane run_many", "sdk": "openai SDK + Semaphore"}


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(400, 1_500, smoke=40)
    rpm = ctx.pick(6_000, RPM)
    latency_s = ctx.pick(LATENCY_S, LATENCY_S, smoke=0.05)
    server = {"rpm": rpm, "latency": latency_s, "latency_sigma": SIGMA, "seed": 2}
    figures: dict[str, Any] = {"rpm": rpm, "requests": requests}
    series_by_variant: dict[str, list[int]] = {}
    rows = []
    for variant in ("ratelane", "sdk"):
        run_ = limited_run(
            ctx,
            server,
            variant,
            timeout_s=300,
            concurrency=CONCURRENCY,
            items={"kind": "ping", "n": requests},
        )
        series = trim_idle(run_.ledger["rate_series"])
        window, is_steady = steady(series, HEAD_S, TAIL_S)
        achieved_rpm = sum(window) / len(window) * 60 if window else 0.0
        client = run_.client
        data = {
            "achieved_rpm": achieved_rpm,
            "achieved_fraction": achieved_rpm / rpm,
            "rate_limited": run_.ledger["rate_limited"],
            "server_requests": run_.ledger["total"],
            "rate_limited_fraction": run_.rate_limited_fraction,
            "succeeded": client["succeeded"],
            "failed": client["failed"],
            "wall_s": client["wall_s"],
            "steady_seconds": len(window),
            "steady_state_reached": is_steady,
            "rate_series": series,
        }
        if variant == "ratelane":
            data["cooldowns"] = client.get("cooldowns")
            data["learned_rpm"] = client.get("learned_rpm")
        figures[variant] = data
        series_by_variant[variant] = series
        ctx.log(
            f"{variant}: {pct(data['achieved_fraction'])} of {rpm} rpm, "
            f"{pct(data['rate_limited_fraction'], 2)} 429s, {client['failed']} failed"
        )
        rows.append(limit_row(LABELS[variant], achieved_rpm, data, run_))
    ours = figures["ratelane"]
    targets = limit_targets("request", "R", ours)
    longest = max(len(s) for s in series_by_variant.values())
    plot = _plots.rate_against_limit(
        ctx.out_dir / "request_limit.png",
        title=f"Admitted requests per second, server limit {rpm} rpm "
        f"(lognormal latency, median {LATENCY_S} s)",
        ylabel="requests admitted per second",
        lines={
            f"{LABELS[v]} ({pct(figures[v]['rate_limited_fraction'], 1)} 429s)": (
                list(range(len(s))),
                [float(x) for x in s],
            )
            for v, s in series_by_variant.items()
        },
        limit=([0.0, float(longest)], [rpm / 60, rpm / 60]),
        shade=(HEAD_S, max(HEAD_S, len(series_by_variant["ratelane"]) - TAIL_S)),
    )
    return report(
        NAME,
        f"2. Request-limit bound ({rpm} rpm, lognormal latency median {LATENCY_S} s)",
        config={
            "rpm": rpm,
            "requests": requests,
            "concurrency": CONCURRENCY,
            "latency_s": LATENCY_S,
            "latency_sigma": SIGMA,
            "steady_state": f"without the first {HEAD_S} s and last {TAIL_S} s",
        },
        columns=["client", "achieved rpm", "of R", "429 share", "429/total", "failed", "wall s"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=[
            f"{requests:,} requests, {CONCURRENCY} concurrent for both clients; ratelane learns "
            "the limit from headers; SDK uses its default max_retries=2 and no limiter",
        ],
        plots=[plot] if plot else [],
    )
