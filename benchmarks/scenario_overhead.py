"""Scenario 1, client overhead: zero latency, no limits, CPU per request.

Each variant runs in a fresh client process against one fake server; rounds
alternate the order of variants. The table shows medians over rounds, and the
ratios are paired: each round's figure against the floor measured in that same
round, then the median of those (this machine's speed drifts between rounds by
more than the differences measured).
"""

from __future__ import annotations

from typing import Any

import _plots
from _bench import (
    Context,
    FakeServer,
    cli_args,
    cli_help,
    client_spec,
    fmt,
    median,
    report,
    run_client,
    target,
)

NAME = "overhead"
CONCURRENCY = 64
LABELS = {
    "raw": "raw aiohttp loop (floor)",
    "ratelane": "ratelane run_many",
    "ratelane_iter": "ratelane iter_results (diagnostic)",
    "sdk": "openai AsyncOpenAI + Semaphore",
    "cli": "ratelane CLI (ratelane run)",
    "raw_file": "hand-rolled file job (raw aiohttp, file to file)",
}
# Variants that are a process of their own, reading INPUT and writing OUTPUT: their CPU is
# the child's, less its interpreter start-up and imports.
FILE_JOBS = ("cli", "raw_file")
#: One-line runs of each file job whose median CPU is its fixed cost (start-up,
#: imports, opening and closing files), subtracted from its measured runs.
FIXED_COST_RUNS = 5


def fixed_cost_s(server: FakeServer, variant: str, options: dict[str, Any]) -> float:
    """Median CPU seconds of a one-line run of ``variant``: what a run costs besides its
    requests (the marginal cost of the lines is what this scenario compares)."""
    one_line = {**options, "items": {"kind": "ping", "n": 1}}
    return median(
        [
            run_client(client_spec(server, variant, **one_line), timeout_s=120)["cpu_s"]
            for _ in range(FIXED_COST_RUNS)
        ]
    )


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(1_500, 20_000, smoke=150)
    rounds = ctx.pick(1, 9)
    # The SDK costs ~10x per request and varies least: fewer of its requests keep a
    # round short without changing its figure.
    sdk_requests = ctx.pick(requests, 5_000)
    warmup = ctx.pick(100, 1_000, smoke=10)
    help_text = cli_help()
    variants = ["raw", "ratelane", "sdk"] + (["cli", "raw_file"] if help_text is not None else [])
    if not ctx.quick:
        variants.insert(2, "ratelane_iter")
    notes = [
        f"{requests:,} requests per variant and round ({sdk_requests:,} for the SDK), "
        f"{CONCURRENCY} concurrent, {rounds} round(s), order rotated each round; warm-up of "
        f"{warmup} requests (same code, own connection pool) before each measured run; "
        "CPU = user+system of the client process (getrusage) over the measured run only"
    ]
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    counts = {variant: sdk_requests if variant == "sdk" else requests for variant in variants}

    def options_of(variant: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "concurrency": CONCURRENCY,
            "items": {"kind": "ping", "n": counts[variant]},
            "warmup": warmup,
        }
        if variant == "cli":
            assert help_text is not None
            options["cli_args"] = cli_args(help_text, CONCURRENCY)
        return options

    with FakeServer(ctx.placement) as server:
        fixed = {  # the smoke level measures nothing: skip the extra process starts
            variant: 0.0 if ctx.smoke else fixed_cost_s(server, variant, options_of(variant))
            for variant in FILE_JOBS
            if variant in variants
        }
        for number in range(rounds):
            shift = number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                result = run_client(
                    client_spec(server, variant, **options_of(variant)), timeout_s=900
                )
                ctx.log(
                    f"round {number + 1} {variant}: "
                    f"{result['cpu_s'] / counts[variant] * 1e6:.0f} us/request, "
                    f"{counts[variant] / result['wall_s']:,.0f} req/s"
                )
                runs[variant].append(result)
        server_cpu_s = server.cpu_s()

    figures: dict[str, Any] = {"requests": requests, "rounds": rounds, "variants": {}}
    per_round: dict[str, list[float]] = {}
    for variant, results in runs.items():
        # A one-line run's fixed cost is that line's too: the rest are requests - 1.
        sent = counts[variant] - 1 if variant in fixed else counts[variant]
        cpu = [r["cpu_s"] - fixed.get(variant, 0.0) for r in results]
        per_round[variant] = [c / sent * 1e6 for c in cpu]
        figures["variants"][variant] = {
            "cpu_us_per_request": median(per_round[variant]),
            "cpu_us_per_request_rounds": [round(value, 1) for value in per_round[variant]],
            "requests_per_s": median([counts[variant] / r["wall_s"] for r in results]),
            "failed": sum(r["failed"] for r in results),
            "rss_peak_mb": max(r["rss_peak_mb"] for r in results),
        }
    if "ratelane_iter" in runs:
        notes.append(
            "ratelane iter_results (diagnostic, full mode only): the same engine, each Result "
            "dropped as it arrives; its gap to run_many is the cost of holding every Result "
            "until the run ends"
        )
    if help_text is None:
        figures["variants"]["cli"] = None
        notes.append("CLI not measured: CLI not available (`ratelane run` does not exist yet)")
    else:
        notes.append(
            f"CLI CPU is the child's (RUSAGE_CHILDREN) minus {fixed['cli']:.2f} s, the median "
            f"CPU of {FIXED_COST_RUNS} one-line runs (interpreter start-up, imports, opening "
            "and closing files), over the other lines; the hand-rolled file job's likewise "
            f"minus {fixed['raw_file']:.2f} s. Both read INPUT from disk and write OUTPUT in "
            "a process of their own, with no warm-up; `raw` runs in the measuring process "
            "after a warm-up"
        )
    notes.append(
        "ratios against raw are paired: each round's figure over the raw loop's in the same "
        "round, median over rounds"
    )
    sdk = figures["variants"]["sdk"]["cpu_us_per_request"]
    for variant, data in figures["variants"].items():
        if data is not None:
            data["ratio_vs_raw"] = paired_ratio(per_round[variant], per_round["raw"])
            data["ratio_vs_sdk"] = data["cpu_us_per_request"] / sdk
    if server_cpu_s:
        total = rounds * sum(requests + (0 if v in FILE_JOBS else warmup) for v in variants)
        figures["server_cpu_us_per_request"] = server_cpu_s / total * 1e6

    rows = []
    for variant in ("raw", "ratelane", "ratelane_iter", "sdk", "cli", "raw_file"):
        if variant not in figures["variants"]:
            continue
        data = figures["variants"][variant]
        if data is None:
            todo = "not measured: CLI not available"
            rows.append([LABELS[variant], "TODO", "TODO", "TODO", todo])
            continue
        rounds_text = "/".join(f"{v:.0f}" for v in data["cpu_us_per_request_rounds"])
        rows.append(
            [
                LABELS[variant],
                fmt(data["cpu_us_per_request"], 0),
                f"{data['ratio_vs_raw']:.2f}x",
                fmt(data["requests_per_s"], 0),
                f"rounds {rounds_text} us; failed {data['failed']}",
            ]
        )
    ratelane = figures["variants"]["ratelane"]
    targets = [
        target(
            "ratelane CPU/request vs raw aiohttp",
            "<= 1.5x",
            f"{ratelane['ratio_vs_raw']:.2f}x",
            ratelane["ratio_vs_raw"] <= 1.5,
        ),
        target(
            "ratelane CPU/request vs openai SDK",
            "<= 0.10x",
            f"{ratelane['ratio_vs_sdk']:.3f}x (SDK {sdk / ratelane['cpu_us_per_request']:.1f}x"
            " more)",
            ratelane["ratio_vs_sdk"] <= 0.10,
        ),
    ]
    cli = figures["variants"].get("cli")
    if cli is not None:
        ratio = cli["ratio_vs_raw"]
        targets.append(
            target("CLI CPU/request vs raw aiohttp", "<= 1.2x", f"{ratio:.2f}x", ratio <= 1.2)
        )
        cli["ratio_vs_raw_file"] = file_ratio = paired_ratio(
            per_round["cli"], per_round["raw_file"]
        )
        targets.append(
            target(
                "CLI CPU/request vs the hand-rolled file job",
                "<= 1.2x",
                f"{file_ratio:.2f}x",
                file_ratio <= 1.2,
            )
        )
    plot = _plots.bars(
        ctx.out_dir / "overhead.png",
        title=f"Client CPU per request ({requests:,} requests, zero latency, median)",
        ylabel="CPU microseconds per request",
        values={
            variant: data["cpu_us_per_request"]
            for variant, data in figures["variants"].items()
            if data is not None
        },
    )
    return report(
        NAME,
        "1. Client overhead (zero latency, no limits)",
        config={"requests": requests, "rounds": rounds, "concurrency": CONCURRENCY},
        columns=["variant", "CPU us/req", "vs raw", "req/s", "detail"],
        rows=rows,
        figures=figures,
        targets=targets,
        notes=notes,
        plots=[plot] if plot else [],
    )


def paired_ratio(values: list[float], floors: list[float]) -> float:
    """The median over rounds of ``value / floor`` within each round."""
    return median([value / floor for value, floor in zip(values, floors, strict=True)])
