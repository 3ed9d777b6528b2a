"""Scenario 5, wide fan-out: N requests in flight at once against a slow server.

ratelane with ``max_concurrency=N`` and no limits against answers that take
a fixed 5 s. Every request is sent before the first answer can arrive, so
the client's RSS sampled (every 20 ms) before that moment is the memory of N
requests in flight; per request = (that peak - RSS before the run) / N. The
server's ledger (10 ms admission series) gives the timeline and the most
requests in flight at once. ratelane sends one probe request first when it
knows no limit, and fans out when the probe's answer arrives.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from _bench import (
    Context,
    FakeServer,
    client_spec,
    fmt,
    raise_open_files,
    report,
    run_client,
    target,
)

NAME = "fanout"
LABELS = {"ratelane": "ratelane run_many", "raw": "raw aiohttp (N workers)"}
SLOT_S = 0.01


def _timeline(series: list[int], requests: int, latency_s: float) -> dict[str, Any]:
    """From the admitted-per-10-ms series: when the second request arrived (after
    ratelane's probe), how long until all had, and the most in flight at once
    (every answer takes exactly ``latency_s``, so a sliding window counts them)."""
    cumulative = list(itertools.accumulate(series))
    second = next((i for i, total in enumerate(cumulative) if total >= 2), 0)
    last = next((i for i, total in enumerate(cumulative) if total >= requests), None)
    span = round(latency_s / SLOT_S)
    most = max(
        (cumulative[i] - (cumulative[i - span] if i >= span else 0) for i in range(len(series))),
        default=0,
    )
    return {
        "bulk_start_s": second * SLOT_S,
        "all_sent_s": None if last is None else (last - second + 1) * SLOT_S,
        "max_in_flight": most,
    }


def _measure(ctx: Context, variant: str, requests: int, latency_s: float) -> dict[str, Any]:
    with FakeServer(ctx.placement, latency=latency_s, seed=5) as server:
        client = run_client(
            client_spec(
                server,
                variant,
                concurrency=requests,
                items={"kind": "ping", "n": requests},
                open_files=requests + 256,
                sample_rss=True,
            ),
            timeout_s=300,
        )
        ledger = server.ledger(bucket_s=SLOT_S)
    timeline = _timeline(ledger["rate_series"], requests, latency_s)
    # Before the first answer to the bulk of requests, every one is in flight.
    inflight_end = float(ledger["first_s"]) + timeline["bulk_start_s"] + latency_s - 0.05
    samples = client.pop("rss_samples")
    inflight_peak = max((rss for t, rss in samples if t <= inflight_end), default=math.nan)
    per_request_kb = (inflight_peak - client["rss_base_mb"]) * 1024 / requests
    ctx.log(
        f"{variant}: {client['succeeded']}/{requests} ok, "
        f"{timeline['max_in_flight']} in flight at once, "
        f"{per_request_kb:.1f} KB per in-flight request"
    )
    return {
        "succeeded": client["succeeded"],
        "failed": client["failed"],
        "errors": dict(client.get("errors") or client.get("outcomes") or {}),
        "attempts": client.get("attempts", requests),
        "wall_s": client["wall_s"],
        **timeline,
        "rss_base_mb": client["rss_base_mb"],
        "rss_inflight_peak_mb": inflight_peak,
        "rss_peak_mb": client["rss_peak_mb"],
        "kb_per_inflight_request": per_request_kb,
        "server_by_status": ledger["by_status"],
        "notes": client["notes"],
    }


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(1_000, 10_000, smoke=30)
    latency_s = ctx.pick(2.0, 5.0, smoke=0.1)
    # The server (started from here) and the client each hold one socket per request.
    notes = [f"orchestrator/server: {raise_open_files(requests + 256)}"]
    variants = ctx.pick(["ratelane"], ["ratelane", "raw"])
    figures: dict[str, Any] = {"requests": requests, "latency_s": latency_s}
    for variant in variants:
        figures[variant] = _measure(ctx, variant, requests, latency_s)
        notes += [f"{variant} client: {note}" for note in figures[variant]["notes"]]
    if "raw" not in figures:
        notes.append("raw aiohttp baseline measured in full mode only")

    def row(label: str, cell: Any) -> list[str]:
        return [label, *(cell(figures[variant]) for variant in variants)]

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    rows = [
        row("requests / failed / attempts",
            lambda d: f"{requests:,} / {d['failed']} / {d['attempts']:,}"),
        row("in flight at once (server view)", lambda d: f"{d['max_in_flight']:,}"),
        row("first request -> second", lambda d: seconds(d["bulk_start_s"])),
        row("second request -> all sent", lambda d: seconds(d["all_sent_s"])),
        row("wall time", lambda d: seconds(d["wall_s"])),
        row("RSS before / in flight / peak (MB)", lambda d: " / ".join(
            fmt(d[key]) for key in ("rss_base_mb", "rss_inflight_peak_mb", "rss_peak_mb"))),
        row("memory per in-flight request", lambda d: f"{d['kb_per_inflight_request']:.1f} KB"),
        row("errors", lambda d: ", ".join(f"{k}: {n}" for k, n in d["errors"].items()
                                           if k != "200") or "none"),
    ]  # fmt: skip
    ours = figures["ratelane"]
    notes.append(
        "ratelane knows no limit here, so it sends one probe request and fans out when its "
        f"answer arrives (first request -> second = one latency, {latency_s:g} s, plus the "
        "time to start the other requests)"
    )
    targets = [
        target(
            f"{requests:,} in flight: no errors",
            "0 failed, all in flight at once (but the probe)",
            f"{ours['failed']} failed, {ours['max_in_flight']:,} in flight at once",
            ours["failed"] == 0 and ours["max_in_flight"] >= requests - 1,
        )
    ]
    return report(
        NAME,
        f"5. Wide fan-out ({requests:,} in flight, {latency_s:g} s latency, no limits)",
        config={"requests": requests, "latency_s": latency_s, "max_concurrency": requests},
        columns=["measure", *(LABELS[variant] for variant in variants)],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=notes,
    )
