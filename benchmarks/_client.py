"""One measured client run, in a fresh interpreter: ``python _client.py SPEC_JSON``.

Prints one JSON line: CPU seconds (``getrusage``, all threads; for the CLI
variant the child's CPU via ``RUSAGE_CHILDREN``), wall seconds, RSS and
outcome counts. The items are built before measuring starts, and an
optional warm-up run (same client code, separate connection pool) precedes
the measured one, so imports and first-call costs are not counted.

Variants:

- ``raw``: the floor. One ``aiohttp.ClientSession``, N workers, ``orjson``
  to encode each body and decode each answer; no retries, no limits.
- ``ratelane``: ``ratelane.Client(...).run_many`` (what ``arun_many`` runs).
- ``ratelane_iter``: the same Client's ``iter_results``, dropping each Result.
- ``sdk``: ``openai.AsyncOpenAI`` + ``asyncio.Semaphore(N)`` + ``gather``,
  what most users write; the SDK's own retries (``max_retries``).
- ``cli``: ``python -m ratelane run INPUT -o OUTPUT`` on a Batch-format file.
- ``raw_file``: the same file job hand-rolled (``_raw_file.py``), the CLI's floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _bench import MODEL, children_cpu_s, cpu_s, peak_rss_mb, raise_open_files, rss_mb

_FILLER = "The quick brown fox jumps over the lazy dog. " * 100


def make_bodies(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """``ping``: identical tiny bodies. ``varied``: 80-4000 characters of input
    (20-1000 tokens) and ``max_output_tokens`` from 16 to 1024, seeded."""
    count = int(spec["n"])
    if spec.get("kind", "ping") == "ping":
        return [{"model": MODEL, "input": "ping", "max_output_tokens": 16} for _ in range(count)]
    rng = random.Random(spec.get("seed", 0))
    outputs = (16, 64, 128, 256, 512, 1024)
    return [
        {
            "model": MODEL,
            "input": _FILLER[: rng.randint(80, 4000)],
            "max_output_tokens": rng.choice(outputs),
        }
        for _ in range(count)
    ]


# -- variants -----------------------------------------------------------------------


async def run_raw(spec: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    import aiohttp
    import orjson

    url = spec["base_url"].rstrip("/") + "/responses"
    headers = {"Authorization": f"Bearer {spec['api_key']}", "Content-Type": "application/json"}
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                try:
                    async with session.post(url, data=orjson.dumps(body)) as response:
                        orjson.loads(await response.read())
                        statuses[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    ok = statuses.get("200", 0)
    return {"succeeded": ok, "failed": len(bodies) - ok, "outcomes": dict(statuses)}


async def run_ratelane(spec: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    import ratelane

    retry = ratelane.RetryPolicy(**spec["retry"]) if spec.get("retry") else None
    errors: Counter[str] = Counter()
    async with ratelane.Client(
        api_key=spec["api_key"],
        base_url=spec["base_url"],
        max_concurrency=spec["concurrency"],
        rpm=spec.get("rpm"),
        tpm=spec.get("tpm"),
        retry=retry,
        timeout_s=spec.get("timeout_s", 600.0),
        # Every run starts cold unless a scenario asks (scenario_remembered).
        remember_limits=spec.get("remember_limits", False),
        breaker=spec.get("breaker", True),
    ) as client:
        if spec["variant"] == "ratelane_iter":
            # Results are dropped as they arrive, as a streaming consumer would.
            # iter_results hands out no stats: count them here from the results.
            stats = ratelane.RunStats()
            async for result in client.iter_results(bodies):
                stats.attempts += result.attempts
                stats.retried += result.attempts > 1
                stats.latencies_s.append(result.latency_s)
                if result.ok:
                    stats.succeeded += 1
                else:
                    stats.failed += 1
                    errors[_error_code(result)] += 1
            stats.cooldowns = client.engine.governor.cooldowns
            most = None
        else:
            results = await client.run_many(bodies)
            errors.update(_error_code(result) for result in results if not result.ok)
            stats = results.stats
            most = max((result.attempts for result in results), default=0)
        governor = client.engine.governor
        learned = {"learned_rpm": governor.learned_rpm, "learned_tpm": governor.learned_tpm}
    return {
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "attempts": stats.attempts,
        "retried": stats.retried,
        "rate_limited": stats.rate_limited,
        "cooldowns": stats.cooldowns,
        "latency_p50_s": stats.latency_percentile(50),
        "latency_p99_s": stats.latency_percentile(99),
        "errors": dict(errors),
        "max_attempts": most,
        **learned,
    }


def _error_code(result: Any) -> str:
    return str(result.error.code or result.status_code) if result.error else "?"


async def run_sdk(spec: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    import openai

    outcomes: Counter[str] = Counter()
    async with openai.AsyncOpenAI(
        base_url=spec["base_url"],
        api_key=spec["api_key"],
        max_retries=spec.get("max_retries", 2),
        timeout=spec.get("timeout_s", 600.0),
    ) as client:
        semaphore = asyncio.Semaphore(spec["concurrency"])

        async def one(body: dict[str, Any]) -> None:
            async with semaphore:
                try:
                    await client.responses.create(**body)
                    outcomes["200"] += 1
                except openai.APIStatusError as exc:
                    outcomes[str(exc.status_code)] += 1
                except openai.APIError as exc:
                    outcomes[type(exc).__name__] += 1

        await asyncio.gather(*(one(body) for body in bodies))
    ok = outcomes.get("200", 0)
    return {"succeeded": ok, "failed": len(bodies) - ok, "outcomes": dict(outcomes)}


VARIANTS: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], Awaitable[dict[str, Any]]]]
VARIANTS = {"raw": run_raw, "ratelane": run_ratelane, "ratelane_iter": run_ratelane, "sdk": run_sdk}


# -- the CLI variant ----------------------------------------------------------------


RAW_FILE_SCRIPT = Path(__file__).with_name("_raw_file.py")


def _cli_command(spec: dict[str, Any], input_path: Path, output_path: Path) -> list[str]:
    if spec["variant"] == "raw_file":
        return [sys.executable, str(RAW_FILE_SCRIPT), str(input_path), str(output_path)]
    command = [sys.executable, "-m", "ratelane", "run", str(input_path), "-o", str(output_path)]
    command += spec.get("cli_args", [])
    if not spec.get("remember_limits", False):
        command.append("--no-remember-limits")  # every run starts cold
    return command


def run_cli(spec: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    environment = dict(os.environ, OPENAI_API_KEY=spec["api_key"], OPENAI_BASE_URL=spec["base_url"])
    environment["RAW_CONCURRENCY"] = str(spec.get("concurrency", 64))
    with tempfile.TemporaryDirectory(prefix="ratelane-bench-") as directory:
        input_path = Path(directory) / "input.jsonl"
        with input_path.open("w") as handle:
            for index, body in enumerate(bodies):
                line = {"custom_id": f"r{index}", "method": "POST", "url": "/v1/responses"}
                handle.write(json.dumps({**line, "body": body}) + "\n")
        output_path = Path(directory) / "output.jsonl"
        cpu_before, started = children_cpu_s(), time.perf_counter()
        completed = subprocess.run(
            _cli_command(spec, input_path, output_path),
            env=environment,
            capture_output=True,
            timeout=spec.get("time_limit_s", 600),
            check=False,
        )
        wall_s = time.perf_counter() - started
        child_cpu_s = children_cpu_s() - cpu_before
        lines = output_path.read_bytes().count(b"\n") if output_path.exists() else 0
    if completed.returncode != 0:
        error = completed.stderr.decode()[-2000:]
        raise SystemExit(f"ratelane run exited {completed.returncode}: {error}")
    return {
        "cpu_s": child_cpu_s,
        "wall_s": wall_s,
        "succeeded": lines,
        "failed": len(bodies) - lines,
    }


# -- measuring ----------------------------------------------------------------------


async def _sample_rss(samples: list[tuple[float, float]]) -> None:
    # time.monotonic is system-wide on Linux: comparable with the server's ledger times.
    while True:
        samples.append((time.monotonic(), rss_mb()))
        await asyncio.sleep(0.02)


async def measured(spec: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    variant = VARIANTS[spec["variant"]]
    samples: list[tuple[float, float]] = []
    rss_base = rss_mb()
    started = time.perf_counter()
    sampler = None
    if spec.get("sample_rss"):
        sampler = asyncio.ensure_future(_sample_rss(samples))
    cpu_before = cpu_s()
    try:
        outcome = await variant(spec, bodies)
    finally:
        cpu_used = cpu_s() - cpu_before
        wall_s = time.perf_counter() - started
        if sampler is not None:
            sampler.cancel()
    outcome.update(cpu_s=cpu_used, wall_s=wall_s, rss_base_mb=rss_base)
    if samples:
        outcome["rss_samples"] = [(round(t, 3), round(rss, 2)) for t, rss in samples]
    return outcome


async def run_spec_async(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured run of ``spec`` on the running loop: what ``main`` prints.

    The smoke level of the suite calls this in a thread of the orchestrator;
    the CLI variant then runs its subprocess in a worker thread.
    """
    notes: list[str] = []
    if spec.get("open_files"):
        notes.append(raise_open_files(int(spec["open_files"])))
    bodies = make_bodies(spec["items"])
    warmup = int(spec.get("warmup", 0))
    if spec["variant"] in ("cli", "raw_file"):
        outcome = await asyncio.to_thread(run_cli, spec, bodies)
    else:
        # Import before measuring so no variant pays for its imports in the figure.
        if spec["variant"] == "sdk":
            import openai  # noqa: F401
        else:
            import ratelane  # noqa: F401
        if warmup:
            await measured(spec, bodies[:warmup])
        outcome = await measured(spec, bodies)
    outcome.update(variant=spec["variant"], n=len(bodies), rss_peak_mb=peak_rss_mb(), notes=notes)
    return outcome


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    outcome = asyncio.run(run_spec_async(spec))
    sys.stdout.write(json.dumps(outcome) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
