"""Scenario 10, an outage: the service resets every connection for a while, then recovers.

Issue 14's case: behind a proxy that went down for 37 s, 985 of 1,500 lines
failed after exhausting their retries. Here the fake server (6,000 rpm
announced, 0.5 s latency) resets every connection from ``OUTAGE_AT_S`` for
``outage_s``, then answers normally; ratelane runs with its default retry
policy, with and without its default circuit breaker. Figures: failed lines,
attempts per line, the most attempts any line took, wall time.

The server runs in a thread of this process (``start_in_thread``) because the
outage is switched with ``FakeOpenAI.set_faults``; the client is the usual
separate process.
"""

from __future__ import annotations

import threading
from typing import Any

from _bench import API_KEY, Context, client_spec, report, run_client, target

NAME = "outage"
RPM = 6_000
OUTAGE_AT_S = 3.0


def _measure(
    ctx: Context, breaker: bool, requests: int, outage_s: float, outage_at_s: float
) -> dict[str, Any]:
    from ratelane.testing import FakeOpenAI, Faults, Latency

    latency = ctx.pick(0.5, 0.5, smoke=0.02)
    server = FakeOpenAI(
        rpm=RPM, tpm=100_000_000, latency=Latency(latency), api_key=API_KEY, seed=10
    ).start_in_thread()
    down = threading.Timer(outage_at_s, server.set_faults, (Faults(reset=1.0),))
    up = threading.Timer(outage_at_s + outage_s, server.set_faults, (Faults(),))
    try:
        down.start()
        up.start()
        client = run_client(
            client_spec(
                server,  # type: ignore[arg-type]  # duck-typed: base_url
                "ratelane",
                concurrency=256,
                items={"kind": "ping", "n": requests},
                breaker=breaker,
            ),
            timeout_s=900,
        )
    finally:
        down.cancel()
        up.cancel()
        server.stop()
    figures = {
        "succeeded": client["succeeded"],
        "failed": client["failed"],
        "attempts": client["attempts"],
        "attempts_per_line": client["attempts"] / requests,
        "max_attempts_of_a_line": client.get("max_attempts"),
        "wall_s": client["wall_s"],
        "errors": client["errors"],
    }
    ctx.log(
        f"breaker {'on' if breaker else 'off'}: {figures['failed']} of {requests} failed, "
        f"{figures['attempts_per_line']:.2f} attempts per line "
        f"(at most {figures['max_attempts_of_a_line']}), {figures['wall_s']:.1f} s"
    )
    return figures


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(600, 1_500, smoke=30)
    outage_s = ctx.pick(15.0, 37.0, smoke=0.3)
    outage_at_s = ctx.pick(OUTAGE_AT_S, OUTAGE_AT_S * 2, smoke=0.05)
    figures: dict[str, Any] = {"requests": requests, "outage_s": outage_s, "rpm": RPM}
    figures["with_breaker"] = _measure(ctx, True, requests, outage_s, outage_at_s)
    figures["without_breaker"] = _measure(ctx, False, requests, outage_s, outage_at_s)
    on, off = figures["with_breaker"], figures["without_breaker"]

    def row(label: str, key: str, show: Any = str) -> list[str]:
        return [label, show(on[key]), show(off[key])]

    rows = [
        row("failed lines", "failed"),
        row("attempts per line", "attempts_per_line", lambda v: f"{v:.2f}"),
        row("most attempts of one line", "max_attempts_of_a_line"),
        row("wall time", "wall_s", lambda v: f"{v:.1f} s"),
    ]
    targets = [
        target(
            "an outage fails no line",
            "0 failed with the breaker, attempts per line bounded",
            f"{on['failed']} failed, {on['attempts_per_line']:.2f} attempts per line",
            on["failed"] == 0,
        )
    ]
    return report(
        NAME,
        f"10. Outage ({requests:,} lines at {RPM:,} rpm, every connection reset for "
        f"{outage_s:g} s)",
        config={"requests": requests, "outage_s": outage_s, "outage_at_s": outage_at_s},
        columns=["measure", "default circuit breaker", "no breaker (--no-breaker)"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=["default RetryPolicy (6 attempts, backoff up to 20 s) and BreakerPolicy"],
    )
