"""Scenario 7, faults: 10% 5xx (half 500, half 503), 2% connection resets, 1% stalls
longer than the client's timeout; completion, attempts per request and the time
overhead against a clean run with the same latency, in the same suite run.
"""

from __future__ import annotations

from typing import Any

from _bench import Context, FakeServer, client_spec, fmt, pct, report, run_client, target

NAME = "faults"
LATENCY_S = 0.2
SIGMA = 0.5
CONCURRENCY = 100
FAULTS = {"fail_rate": 0.05, "fail_503_rate": 0.05, "reset_rate": 0.02, "stall_rate": 0.01}


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(300, 4_000, smoke=40)
    timeout_s = ctx.pick(1.0, 2.0, smoke=0.3)
    stall_s = ctx.pick(2.0, 5.0, smoke=0.5)
    base = {
        "latency": ctx.pick(LATENCY_S, LATENCY_S, smoke=0.02),
        "latency_sigma": SIGMA,
        "seed": 7,
    }
    faulty = {**base, **FAULTS, "stall_s": stall_s, "stall_then": "drop"}
    outcomes: dict[str, dict[str, Any]] = {}
    for label, options in (("clean", base), ("faulty", faulty)):
        with FakeServer(ctx.placement, **options) as server:
            client = run_client(
                client_spec(
                    server,
                    "ratelane",
                    concurrency=CONCURRENCY,
                    timeout_s=timeout_s,
                    items={"kind": "ping", "n": requests},
                ),
                timeout_s=600,
            )
            ledger = server.ledger()
        outcomes[label] = {
            "succeeded": client["succeeded"],
            "failed": client["failed"],
            "errors": client["errors"],
            "attempts": client["attempts"],
            "attempts_per_request": client["attempts"] / requests,
            "completion": client["succeeded"] / requests,
            "wall_s": client["wall_s"],
            "latency_p99_s": client["latency_p99_s"],
            "server_by_fault": ledger["by_fault"],
            "server_by_status": ledger["by_status"],
        }
        ctx.log(
            f"{label}: {client['succeeded']}/{requests} ok, "
            f"{client['attempts'] / requests:.3f} attempts/request, {client['wall_s']:.2f} s"
        )
    clean, bad = outcomes["clean"], outcomes["faulty"]
    overhead = bad["wall_s"] / clean["wall_s"] - 1
    figures = {**outcomes, "requests": requests, "time_overhead": overhead}
    rows = [
        [
            label,
            f"{data['succeeded']:,}/{requests:,}",
            pct(data["completion"], 2),
            f"{data['attempts_per_request']:.3f}",
            fmt(data["wall_s"], 2),
            fmt(data["latency_p99_s"], 2),
            ", ".join(f"{kind} {n}" for kind, n in sorted(data["server_by_fault"].items())) or "-",
        ]
        for label, data in outcomes.items()
    ]
    return report(
        NAME,
        f"7. Faults (10% 5xx, 2% resets, 1% stalls of {stall_s:g} s > timeout {timeout_s:g} s)",
        config={
            "requests": requests,
            "concurrency": CONCURRENCY,
            "latency_s": LATENCY_S,
            "latency_sigma": SIGMA,
            "timeout_s": timeout_s,
            "stall_s": stall_s,
            **FAULTS,
        },
        columns=["run", "ok", "completion", "attempts/req", "wall s", "p99 s", "faults injected"],
        rows=rows,
        figures=figures,
        targets=[
            target(
                "completion under faults",
                "100%",
                f"{pct(bad['completion'], 2)} ({overhead:+.0%} time vs clean)",
                bad["failed"] == 0,
            )
        ],
        notes=[
            f"default RetryPolicy (6 attempts, full-jitter backoff from 0.5 s), "
            f"timeout_s={timeout_s:g}; time overhead {overhead:+.1%} vs the clean run",
        ],
    )
