"""Scenario 9, many processes, one budget: 1, 2, 4 and 8 ``ratelane run --redis-url``
processes share one Redis budget against one fake server with a request limit. How close
to the limit do they get together, at what share of 429s, and what does each admission
cost Redis?

The work is the same for every process count (one input split into P files), so each
configuration runs about as long. The processes start one after the other; the shared
budget is held closed (a cool-down, renewed) until all P have registered, then opens for
all at once (``_redis_server.open_together``), so the steady state is all P running. The
achieved rate is the server's count of admitted (non-429) requests per second over the
steady state: the run without its first and last seconds.

Acquire latency: one process admits sequentially through Redis (``RedisLimiter.acquire``,
a limit far above the rate so nothing waits): p50/p99 of the round trip, and Redis' own
``usec_per_call`` for the script. Script calls per admission come from Redis'
``INFO commandstats`` over each multi-process run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

import _plots
from _bench import API_KEY, MODEL, Context, FakeServer, pct, report, steady, target, trim_idle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _redis_server import RedisServer, open_together

NAME = "redis"
RPM = 3_000
LATENCY_S = 0.2
PROCESS_COUNTS = (1, 2, 4, 8)
BUCKET_S = 0.1


def _write_inputs(directory: Path, processes: int, lines: int) -> list[Path]:
    paths = [directory / f"in.{index}.jsonl" for index in range(processes)]
    files = [path.open("wb") for path in paths]
    try:
        for line in range(lines):
            custom_id = f"r{line}"
            body = {"model": MODEL, "input": f"Say hello to {custom_id}.", "max_output_tokens": 16}
            request = {"custom_id": custom_id, "method": "POST", "url": "/v1/responses"}
            files[line % processes].write(orjson.dumps({**request, "body": body}) + b"\n")
    finally:
        for file in files:
            file.close()
    return paths


async def _script_stats(url: str) -> tuple[int, float]:
    """Script calls so far and Redis' microseconds per call (EVALSHA)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    calls = sum(int(value["calls"]) for name, value in stats.items() if "eval" in name)
    usec = [float(value["usec_per_call"]) for name, value in stats.items() if "evalsha" in name]
    return calls, (usec[0] if usec else float("nan"))


async def _acquire_latency(url: str, count: int) -> dict[str, float]:
    from ratelane._limits.redis_budget import RedisLimiter

    limiter = RedisLimiter(url, api_key="latency-probe", rpm=1e9, tpm=1e12)
    samples: list[float] = []
    try:
        await limiter.register()
        for _ in range(count):
            began = time.perf_counter()
            await limiter.acquire(1, 20)
            samples.append(time.perf_counter() - began)
    finally:
        await limiter.aclose()
    samples.sort()
    return {
        "p50_ms": samples[len(samples) // 2] * 1000,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
    }


def _one_count(
    ctx: Context, server: FakeServer, redis: RedisServer, processes: int, lines: int
) -> dict[str, Any]:
    server.reset()
    calls_before, _ = asyncio.run(_script_stats(redis.url))
    with tempfile.TemporaryDirectory(prefix="ratelane-bench-redis-") as directory:
        paths = _write_inputs(Path(directory), processes, lines)
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": server.base_url}
        runs = [
            subprocess.Popen(
                [
                    sys.executable, "-m", "ratelane", "run", str(path),
                    "-o", str(path.with_suffix(".out.jsonl")),
                    "--redis-url", redis.url, "--no-progress",
                ],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            for path in paths
        ]  # fmt: skip
        asyncio.run(open_together(redis.url, API_KEY, processes))
        codes = []
        for process in runs:
            _, stderr = process.communicate(timeout=600)
            codes.append(process.returncode)
            if process.returncode:
                ctx.log(stderr.decode(errors="replace")[-800:])
    ledger = server.ledger(bucket_s=BUCKET_S)
    calls_after, usec = asyncio.run(_script_stats(redis.url))
    series = trim_idle(ledger["rate_series"])
    per_s = round(1 / BUCKET_S)
    kept, full = steady(series, per_s, per_s)
    achieved_per_s = sum(kept) / (len(kept) * BUCKET_S) if kept else 0.0
    windows = [sum(series[i : i + per_s]) for i in range(max(1, len(series) - per_s + 1))]
    total = int(ledger["total"])
    admitted = total - int(ledger["rate_limited"])
    return {
        "processes": processes,
        "exit_codes": codes,
        "requests": total,
        "rate_limited": int(ledger["rate_limited"]),
        "rate_limited_share": ledger["rate_limited"] / total if total else None,
        "achieved_rpm": achieved_per_s * 60,
        "steady_state_full": full,
        "busiest_1s": max(windows) if windows else 0,
        "script_calls": calls_after - calls_before,
        "script_calls_per_admission": (calls_after - calls_before) / admitted if admitted else None,
        "usec_per_script_call": usec,
        "series": [count / BUCKET_S for count in series],
    }


def run(ctx: Context) -> dict[str, Any]:
    rpm = ctx.pick(6_000, RPM, smoke=6_000)
    counts = ctx.pick(PROCESS_COUNTS, PROCESS_COUNTS, smoke=(2,))
    seconds = ctx.pick(6.0, 20.0, smoke=0.3)
    lines = max(int(rpm / 60 * seconds), 8)
    per_count: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ratelane-bench-redis-server-") as directory,
        RedisServer(Path(directory)) as redis,
        FakeServer(ctx.placement, rpm=rpm, tpm=rpm * 1000, latency=LATENCY_S, seed=9) as server,
    ):
        latency = asyncio.run(_acquire_latency(redis.url, ctx.pick(2_000, 10_000, smoke=200)))
        ctx.log(f"acquire through Redis: p50 {latency['p50_ms']:.2f} ms, p99 "
                f"{latency['p99_ms']:.2f} ms")  # fmt: skip
        for processes in counts:
            result = _one_count(ctx, server, redis, processes, lines)
            per_count.append(result)
            ctx.log(
                f"{processes} processes: {result['achieved_rpm'] / rpm:.1%} of the limit, "
                f"{result['rate_limited']} 429s, {result['script_calls_per_admission']:.2f} "
                "script calls per admission"
            )
    limit_per_s = rpm / 60
    rows = [
        [
            str(result["processes"]),
            pct(result["achieved_rpm"] / rpm),
            f"{result['rate_limited']} ({pct(result['rate_limited_share'], 2)})",
            f"{result['busiest_1s']} (server allows {2 * limit_per_s:.0f})",
            f"{result['script_calls_per_admission']:.2f}",
        ]
        for result in per_count
    ]
    worst = min(result["achieved_rpm"] / rpm for result in per_count)
    most_429 = max(result["rate_limited_share"] or 0.0 for result in per_count)
    plots = [
        plot
        for plot in (
            _plots.bars(
                ctx.out_dir / "redis_processes.png",
                title=f"Processes sharing one Redis budget: % of a {rpm} rpm limit achieved",
                ylabel="% of the limit (steady state)",
                values={
                    f"{result['processes']} proc.": 100 * result["achieved_rpm"] / rpm
                    for result in per_count
                },
            ),
            _plots.rate_against_limit(
                ctx.out_dir / "redis_rate.png",
                title=f"Admitted requests per second, all processes together ({rpm} rpm)",
                ylabel=f"requests admitted per second ({BUCKET_S:g} s buckets)",
                lines={
                    f"{result['processes']} processes": (
                        [i * BUCKET_S for i in range(len(result["series"]))],
                        result["series"],
                    )
                    for result in per_count
                },
                limit=(
                    [0.0, max(len(r["series"]) for r in per_count) * BUCKET_S],
                    [limit_per_s, limit_per_s],
                ),
            ),
        )
        if plot
    ]
    return report(
        NAME,
        f"9. Many processes, one Redis budget ({rpm} rpm, {lines} requests per run)",
        config={
            "rpm": rpm,
            "latency_s": LATENCY_S,
            "process_counts": list(counts),
            "requests_per_run": lines,
            "redis": redis.binary,
        },
        columns=[
            "processes",
            "of the limit",
            "429s",
            "busiest 1 s",
            "script calls per admission",
        ],
        rows=rows,
        figures={"acquire_latency": latency, "runs": per_count},
        targets=[
            target(">= 97% of the limit, all counts", ">= 97%", pct(worst), worst >= 0.97),
            target("<= 1% 429s, all counts", "<= 1%", pct(most_429, 2), most_429 <= 0.01),
        ],
        notes=[
            f"acquire through Redis (one process, sequential): p50 {latency['p50_ms']:.2f} ms, "
            f"p99 {latency['p99_ms']:.2f} ms; Redis reports "
            f"{per_count[-1]['usec_per_script_call']:.0f} us per script call",
            "script calls per admission include the heartbeats (one a second per process), "
            "the usage corrections (summed, one call a quarter second at most) and the shared "
            "limits",
        ],
        plots=plots,
    )
