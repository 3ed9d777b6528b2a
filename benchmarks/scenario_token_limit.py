"""Scenario 3, token-limit bound: the server allows T tokens/min and charges each
request its input estimate plus ``max_output_tokens`` (like OpenAI); prompts of
80-4,000 characters and output caps of 16-1,024 tokens.

The achieved rate is the server's charged tokens (its ledger, polled every
0.25 s) over the steady state, as a fraction of T. ratelane learns T from the
response headers.
"""

from __future__ import annotations

from typing import Any

import _plots
from _bench import Context, LimitedRun, limit_row, limit_targets, limited_run, pct, report

NAME = "token_limit"
TPM = 1_000_000
LATENCY_S = 0.5
SIGMA = 0.5
CONCURRENCY = 256
HEAD_S = 2.0
TAIL_S = 1.0
LABELS = {"ratelane": "ratelane run_many", "sdk": "openai SDK + Semaphore"}


def steady_tokens_per_minute(run_: LimitedRun) -> tuple[float, float, float, bool]:
    """``(tokens per minute, window start, window end, steady)`` over the steady state;
    over the whole run but its first second (``steady`` False) when the run is too short."""
    start, end, is_steady = HEAD_S, run_.last_token_s() - TAIL_S, True
    if end - start < 1.0:
        start, end, is_steady = 1.0, run_.last_token_s(), False
    if end <= start:
        start = 0.0
    tokens = run_.tokens_at(end) - run_.tokens_at(start)
    return tokens / (end - start) * 60, start, end, is_steady


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(140, 800, smoke=20)
    tpm = ctx.pick(2_000_000, TPM)
    latency_s = ctx.pick(LATENCY_S, LATENCY_S, smoke=0.05)
    server = {"tpm": tpm, "latency": latency_s, "latency_sigma": SIGMA, "seed": 3}
    figures: dict[str, Any] = {"tpm": tpm, "requests": requests}
    rows = []
    lines: dict[str, tuple[list[float], list[float]]] = {}
    shade = (HEAD_S, HEAD_S + 1.0)
    for variant in ("ratelane", "sdk"):
        run_ = limited_run(
            ctx,
            server,
            variant,
            timeout_s=300,
            concurrency=CONCURRENCY,
            items={"kind": "varied", "n": requests, "seed": 3},
        )
        achieved, start, end, is_steady = steady_tokens_per_minute(run_)
        client = run_.client
        data = {
            "achieved_tpm": achieved,
            "achieved_fraction": achieved / tpm,
            "tokens_charged": run_.ledger["tokens_charged"],
            "rate_limited": run_.ledger["rate_limited"],
            "server_requests": run_.ledger["total"],
            "rate_limited_fraction": run_.rate_limited_fraction,
            "succeeded": client["succeeded"],
            "failed": client["failed"],
            "wall_s": client["wall_s"],
            "steady_window_s": [round(start, 2), round(end, 2)],
            "steady_state_reached": is_steady,
        }
        if variant == "ratelane":
            data["cooldowns"] = client.get("cooldowns")
            data["learned_tpm"] = client.get("learned_tpm")
            shade = (start, end)
        figures[variant] = data
        times, rates = run_.token_series()
        lines[f"{LABELS[variant]} ({pct(data['rate_limited_fraction'], 1)} 429s)"] = (
            times,
            [rate * 60 / 1000 for rate in rates],
        )
        ctx.log(
            f"{variant}: {pct(data['achieved_fraction'])} of {tpm:,} tpm, "
            f"{pct(data['rate_limited_fraction'], 2)} 429s, {client['failed']} failed"
        )
        rows.append(limit_row(LABELS[variant], achieved, data, run_))
    ours = figures["ratelane"]
    targets = limit_targets("token", "T", ours)
    longest = max((times[-1] for times, _ in lines.values() if times), default=1.0)
    plot = _plots.rate_against_limit(
        ctx.out_dir / "token_limit.png",
        title=f"Charged tokens per minute (0.25 s polls), server limit {tpm:,} tpm",
        ylabel="thousand tokens per minute",
        lines=lines,
        limit=([0.0, longest], [tpm / 1000, tpm / 1000]),
        shade=shade,
    )
    return report(
        NAME,
        f"3. Token-limit bound ({tpm:,} tpm, varied prompts and max_output_tokens)",
        config={
            "tpm": tpm,
            "requests": requests,
            "concurrency": CONCURRENCY,
            "latency_s": LATENCY_S,
            "latency_sigma": SIGMA,
            "steady_state": f"without the first {HEAD_S:g} s and last {TAIL_S:g} s",
        },
        columns=["client", "achieved tpm", "of T", "429 share", "429/total", "failed", "wall s"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=[
            f"{requests:,} requests, {CONCURRENCY} concurrent; input 80-4,000 characters, "
            "max_output_tokens 16-1,024 (about 840 tokens charged per request on average)",
        ],
        plots=[plot] if plot else [],
    )
