"""Batch API mode at scale: a 200,000-line file through ``ratelane run --via batch``.

In a temporary directory, writes ``--lines`` Batch-format requests (~330
bytes each), starts ``ratelane fake-server --port 0`` in a process of its own
(its batches in compressed time: ``--batch-time-scale``), and runs the CLI
once under a small wrapper process that reports the CLI's peak RSS and CPU
time (``getrusage`` of its child). The split into chunks, the uploads, the
polling, the downloads and the merge into OUTPUT are all client work; while
it waits on the server (batches validating and running) the client sleeps.
So the client's CPU seconds are the "time outside waiting on the server"
the issue asks about; wall-clock seconds are printed beside them.

Targets (issue 11): peak RSS under 100 MB, client time outside server waits
under 30 s. Usage::

    .venv/bin/python benchmarks/scenario_batch.py [--lines 200000] [--time-scale 1]

In ``run_all.py`` (scenario ``batch``): the full level runs this script with
200,000 lines in a fresh process, the quick level with 20,000; the smoke level
only says where it lives (the CLI tests cover the same path in seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from cli_scale import _rss_mb, generate  # the same INPUT and RSS units as the CLI scale run

# Reports the child's peak RSS (KiB) and CPU seconds (user + system) on its last line.
WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(u.ru_maxrss, u.ru_utime + u.ru_stime, flush=True); "
    "sys.exit(code)"
)
RSS_TARGET_MB = 100
CLIENT_TARGET_S = 30
NAME = "batch"
TIME_LIMIT_S = 900


def check_output(path: Path, lines: int) -> tuple[int, int]:
    """(lines in OUTPUT, distinct custom_ids): both must equal ``lines``."""
    seen: set[str] = set()
    count = 0
    with path.open("rb") as output:
        for raw in output:
            count += 1
            seen.add(orjson.loads(raw)["custom_id"])
    return count, len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--time-scale", type=float, default=1.0, help="fake batch phases")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    options = parser.parse_args()
    lines = options.lines

    with tempfile.TemporaryDirectory(prefix="ratelane-batch-scale-") as directory:
        root = Path(directory)
        source, output = root / "input.jsonl", root / "output.jsonl"
        began = time.perf_counter()
        generate(source, lines)
        size_mb = source.stat().st_size / 1e6
        print(f"input: {lines:,} lines, {size_mb:,.0f} MB ({time.perf_counter() - began:.1f} s)")
        server_argv = [sys.executable, "-m", "ratelane", "fake-server", "--port", "0",
                       "--ledger-limit", "0", "--store-limit", "1", "--unlimited",
                       "--batch-time-scale", str(options.time_scale)]  # fmt: skip
        with subprocess.Popen(server_argv, stdout=subprocess.PIPE, text=True) as server:
            try:
                assert server.stdout is not None
                info: dict[str, Any] = json.loads(server.stdout.readline())
                env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
                env.update(OPENAI_API_KEY=info["api_key"], OPENAI_BASE_URL=info["base_url"])
                run = [sys.executable, "-m", "ratelane", "run", str(source), "-o", str(output),
                       "--via", "batch", "--poll-interval", str(options.poll_interval),
                       "--no-progress"]  # fmt: skip
                started = time.perf_counter()
                process = subprocess.run(
                    [sys.executable, "-c", WRAPPER, *run],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                wall_s = time.perf_counter() - started
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(30)
        if process.returncode != 0:
            print(process.stderr, file=sys.stderr)
        rss_kib, cpu_text = process.stdout.strip().splitlines()[-1].split()
        peak_mb, client_s = _rss_mb(int(rss_kib)), float(cpu_text)
        written, distinct = check_output(output, lines)
        output_mb = output.stat().st_size / 1e6

    print(f"exit code {process.returncode}; OUTPUT {written:,} lines ({distinct:,} distinct ids), "
          f"{output_mb:,.0f} MB")  # fmt: skip
    print(f"wall clock {wall_s:.1f} s (batches run in the server's compressed time meanwhile)")
    print(
        f"client CPU (split, upload, poll, download, merge) {client_s:.1f} s "
        f"(target < {CLIENT_TARGET_S} s): {'met' if client_s < CLIENT_TARGET_S else 'NOT met'}"
    )
    print(
        f"client peak RSS {peak_mb:.1f} MB (target < {RSS_TARGET_MB} MB): "
        f"{'met' if peak_mb < RSS_TARGET_MB else 'NOT met'}"
    )
    summary = {
        "lines": lines,
        "exit_code": process.returncode,
        "output_lines": written,
        "distinct_ids": distinct,
        "wall_s": round(wall_s, 2),
        "client_cpu_s": round(client_s, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }
    print(orjson.dumps(summary).decode())


def run(ctx: Any) -> dict[str, Any]:
    """The ``batch`` scenario of ``run_all.py``: this script in a fresh process."""
    from _bench import report, target

    title = "Batch API mode (a 200,000-line file through `ratelane run --via batch`)"
    if ctx.smoke:
        note = "see benchmarks/scenario_batch.py (not run at the smoke level)"
        return report(NAME, title, config={}, columns=[], rows=[], figures={"status": note},
                      notes=[note])  # fmt: skip
    lines = ctx.pick(20_000, 200_000)
    ctx.log(f"running {Path(__file__).name} --lines {lines:,} (up to {TIME_LIMIT_S} s)")
    done = subprocess.run(
        [sys.executable, __file__, "--lines", str(lines)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
        check=False,
    )
    output = done.stdout.strip().splitlines()
    if done.returncode != 0 or not output:
        raise RuntimeError(f"scenario_batch.py exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(output[-1])
    ok = summary["exit_code"] == 0 and summary["distinct_ids"] == summary["output_lines"] == lines
    return report(
        NAME,
        title,
        config={"lines": lines},
        columns=["scenario_batch.py output"],
        rows=[[line] for line in output[:-1]],
        figures=summary,
        targets=[
            target("every line once in OUTPUT", f"{lines:,}", f"{summary['distinct_ids']:,}", ok),
            target(
                f"client peak RSS, {lines:,} lines",
                f"< {RSS_TARGET_MB} MB",
                f"{summary['peak_rss_mb']:.1f} MB",
                summary["peak_rss_mb"] < RSS_TARGET_MB,
            ),
            target(
                "client time outside server waits (CPU s)",
                f"< {CLIENT_TARGET_S} s",
                f"{summary['client_cpu_s']:.1f} s",
                summary["client_cpu_s"] < CLIENT_TARGET_S,
            ),
        ],
        notes=["client time is the CLI's CPU seconds: it sleeps while the batches run"],
    )


if __name__ == "__main__":
    main()
