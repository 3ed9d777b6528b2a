"""Scenario 1, client overhead: zero latency, no limits, CPU per request.

Each variant runs in a fresh client process against one fake server; rounds
alternate the order of variants, and the table shows medians over rounds
with ratios against the raw aiohttp floor measured in the same run.
"""

from __future__ import annotations

from typing import Any

import _plots
from _bench import (
    Context,
    FakeServer,
    cli_args,
    cli_help,
    cli_startup_cpu_s,
    client_spec,
    fmt,
    median,
    raw_file_startup_cpu_s,
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


def run(ctx: Context) -> dict[str, Any]:
    requests = ctx.pick(1_500, 20_000, smoke=150)
    rounds = ctx.pick(1, 3)
    warmup = ctx.pick(100, 1_000, smoke=10)
    help_text = cli_help()
    variants = ["raw", "ratelane", "sdk"] + (["cli", "raw_file"] if help_text is not None else [])
    if not ctx.quick:
        variants.insert(2, "ratelane_iter")
    notes = [
        f"{requests:,} requests per variant and round, {CONCURRENCY} concurrent, "
        f"{rounds} round(s), order rotated each round; warm-up of {warmup} requests "
        "(same code, own connection pool) before each measured run; CPU = user+system "
        "of the client process (getrusage) over the measured run only"
    ]
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    startup_s = cli_startup_cpu_s() if help_text is not None else 0.0
    raw_file_startup_s = raw_file_startup_cpu_s() if help_text is not None else 0.0
    startups = {"cli": startup_s, "raw_file": raw_file_startup_s}
    with FakeServer(ctx.placement) as server:
        for number in range(rounds):
            shift = number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                options: dict[str, Any] = {
                    "concurrency": CONCURRENCY,
                    "items": {"kind": "ping", "n": requests},
                    "warmup": warmup,
                }
                if variant == "cli":
                    assert help_text is not None
                    options["cli_args"] = cli_args(help_text, CONCURRENCY)
                result = run_client(client_spec(server, variant, **options), timeout_s=900)
                ctx.log(
                    f"round {number + 1} {variant}: "
                    f"{result['cpu_s'] / requests * 1e6:.0f} us/request, "
                    f"{requests / result['wall_s']:,.0f} req/s"
                )
                runs[variant].append(result)
        server_cpu_s = server.cpu_s()

    figures: dict[str, Any] = {"requests": requests, "rounds": rounds, "variants": {}}
    for variant, results in runs.items():
        cpu = [r["cpu_s"] - startups.get(variant, 0.0) for r in results]
        figures["variants"][variant] = {
            "cpu_us_per_request": median([c / requests * 1e6 for c in cpu]),
            "cpu_us_per_request_rounds": [round(c / requests * 1e6, 1) for c in cpu],
            "requests_per_s": median([requests / r["wall_s"] for r in results]),
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
            f"CLI CPU is the child's (RUSAGE_CHILDREN) minus {startup_s:.2f} s of interpreter "
            "start-up and imports (median of 3 `ratelane run --help`); the hand-rolled file "
            f"job's likewise minus {raw_file_startup_s:.2f} s (`_raw_file.py --imports-only`). "
            "Both read INPUT from disk and write OUTPUT in a process of their own, with no "
            "warm-up; `raw` runs in the measuring process after a warm-up"
        )
    floor = figures["variants"]["raw"]["cpu_us_per_request"]
    sdk = figures["variants"]["sdk"]["cpu_us_per_request"]
    for data in figures["variants"].values():
        if data is not None:
            data["ratio_vs_raw"] = data["cpu_us_per_request"] / floor
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
            target("CLI CPU/request vs raw aiohttp", "<= 1.5x", f"{ratio:.2f}x", ratio <= 1.5)
        )
        floor_file = figures["variants"]["raw_file"]["cpu_us_per_request"]
        cli["ratio_vs_raw_file"] = file_ratio = cli["cpu_us_per_request"] / floor_file
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
