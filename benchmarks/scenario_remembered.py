"""Scenario 9, remembered limits: time to the 50th request at 5 s latency, cold and warm.

A notebook call of 50 prompts against a slow model. With no limit known,
ratelane sends one probe and waits for its answer (one latency) before
fanning out; with the limits remembered from an earlier run
(``RATELANE_CACHE_DIR``), it starts at 90% of them at once. The same server
(tier-5 limits announced in headers) answers both runs; the cold run starts
from an empty cache directory and leaves the learned limits in it, the warm
run reads them. Times come from the server's ledger (10 ms admission series):
from the first request to the 50th.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any

from _bench import Context, FakeServer, client_spec, report, run_client, target

NAME = "remembered"
SLOT_S = 0.01


def _time_to(series: list[int], count: int) -> float | None:
    cumulative = list(itertools.accumulate(series))
    first = next((i for i, total in enumerate(cumulative) if total >= 1), None)
    nth = next((i for i, total in enumerate(cumulative) if total >= count), None)
    return None if first is None or nth is None else (nth - first) * SLOT_S


def _measure(ctx: Context, server: FakeServer, label: str, requests: int) -> dict[str, Any]:
    server.reset()
    client = run_client(
        client_spec(
            server,
            "ratelane",
            concurrency=256,
            items={"kind": "ping", "n": requests},
            remember_limits=True,
        ),
        timeout_s=120,
    )
    ledger = server.ledger(bucket_s=SLOT_S)
    figures = {
        "succeeded": client["succeeded"],
        "failed": client["failed"],
        "wall_s": client["wall_s"],
        "to_nth_request_s": _time_to(ledger["rate_series"], requests),
        "to_second_request_s": _time_to(ledger["rate_series"], 2),
    }
    ctx.log(
        f"{label}: {figures['succeeded']}/{requests} ok, {requests}th request after "
        f"{figures['to_nth_request_s']} s, all answered in {figures['wall_s']:.2f} s"
    )
    return figures


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(50, 50, smoke=10)
    latency_s = ctx.pick(5.0, 5.0, smoke=0.2)
    previous = os.environ.get("RATELANE_CACHE_DIR")
    figures: dict[str, Any] = {"requests": requests, "latency_s": latency_s}
    with tempfile.TemporaryDirectory(prefix="ratelane-remembered-") as cache_dir:
        os.environ["RATELANE_CACHE_DIR"] = cache_dir  # the clients inherit it
        try:
            with FakeServer(
                ctx.placement, latency=latency_s, seed=9, rpm="tier-5", tpm="tier-5"
            ) as server:
                figures["cold"] = _measure(ctx, server, "cold (nothing remembered)", requests)
                figures["warm"] = _measure(ctx, server, "warm (limits remembered)", requests)
        finally:
            if previous is None:
                os.environ.pop("RATELANE_CACHE_DIR", None)
            else:
                os.environ["RATELANE_CACHE_DIR"] = previous
    cold, warm = figures["cold"], figures["warm"]

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    rows = [
        ["first request -> second", seconds(cold["to_second_request_s"]),
         seconds(warm["to_second_request_s"])],
        [f"first request -> {requests}th", seconds(cold["to_nth_request_s"]),
         seconds(warm["to_nth_request_s"])],
        [f"all {requests} answered (client wall time)", seconds(cold["wall_s"]),
         seconds(warm["wall_s"])],
        ["failed", str(cold["failed"]), str(warm["failed"])],
    ]  # fmt: skip
    warm_nth = warm["to_nth_request_s"]
    targets = [
        target(
            "remembered limits: no probe wait",
            f"{requests}th request well before one latency ({latency_s:g} s)",
            seconds(warm_nth),
            warm_nth is not None and warm_nth < latency_s / 2,
        )
    ]
    return report(
        NAME,
        f"9. Remembered limits ({requests} requests, {latency_s:g} s latency)",
        config={"requests": requests, "latency_s": latency_s, "max_concurrency": 256},
        columns=["measure", "cold: no limits remembered", "warm: limits remembered"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=[
            "the same server for both runs (tier-5 limits announced in headers); the warm run "
            "starts at 90% of the remembered limits and the headers correct them",
            "a server that announces no limit leaves nothing to remember: both runs probe "
            "(measured with --unlimited: 5.09 s and 5.06 s to the 50th request)",
        ],
    )
