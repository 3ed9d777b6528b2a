"""``ratelane run`` end to end on a million lines: throughput, peak memory, resume cost.

In a temporary directory, writes an input of ``--lines`` Batch-format
requests (~330 bytes each), starts ``ratelane fake-server --port 0`` (zero
latency, no limits) in a process of its own, and measures, each phase a fresh
CLI process:

- validate: ``ratelane run --dry-run`` on the input (one streaming pass);
- run: the whole input through ``ratelane run``: lines/s and peak RSS;
- resume: OUTPUT cut back to ``lines - pending`` successes (as if the run had
  crashed near the end), then the same command again: seconds from process
  start until the fake server sees the first request (validation, done-set
  build and skipping the done lines all happen before it), total seconds,
  and peak RSS.

Peak RSS is ``ru_maxrss`` of the CLI as seen by a small wrapper process that
starts it (a child's ``ru_maxrss`` starts from its parent's RSS at fork, so
the wrapper must be small). Usage::

    .venv/bin/python benchmarks/cli_scale.py [--lines 1000000] [--pending 1000]
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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True); "
    "sys.exit(code)"
)
POLL_S = 0.005


@dataclass
class Phase:
    name: str
    seconds: float
    peak_rss_mb: float
    exit_code: int
    first_request_s: float | None = None


def generate(path: Path, lines: int) -> None:
    padding = "lorem ipsum dolor sit amet " * 7
    template = (
        '{"custom_id": "request-%d", "method": "POST", "url": "/v1/responses", "body": '
        '{"model": "gpt-4.1-mini", "input": "Summarise item %d: ' + padding + '", '
        '"max_output_tokens": 64}}\n'
    ).encode()
    with path.open("wb", buffering=1 << 20) as file:
        for number in range(lines):
            file.write(template % (number, number))


def _rss_mb(kib: int) -> float:
    return kib / (1 << 20) if sys.platform == "darwin" else kib / 1024


def ledger_total(admin_url: str) -> int:
    with urllib.request.urlopen(f"{admin_url}/ledger", timeout=10) as response:
        return int(json.loads(response.read())["total"])


def measure(
    name: str, argv: list[str], env: dict[str, str], *, admin_url: str | None = None
) -> Phase:
    """Run ``argv`` under the wrapper; with ``admin_url``, also time the first request."""
    before = ledger_total(admin_url) if admin_url else 0
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first: float | None = None
    if admin_url is not None:
        while process.poll() is None:
            if ledger_total(admin_url) > before:
                first = time.perf_counter() - started
                break
            time.sleep(POLL_S)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        print(stderr, file=sys.stderr)
    rss = _rss_mb(int(stdout.strip().splitlines()[-1])) if stdout.strip() else float("nan")
    return Phase(name, seconds, rss, process.returncode, first)


def keep_first_lines(path: Path, count: int) -> None:
    """Cut ``path`` after its first ``count`` lines."""
    with path.open("rb+") as file:
        offset = 0
        for seen, raw in enumerate(file, 1):
            offset += len(raw)
            if seen == count:
                break
        file.truncate(offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=1000)
    parser.add_argument("--max-concurrency", type=int, default=256)
    options = parser.parse_args()
    lines, pending = options.lines, options.pending

    with tempfile.TemporaryDirectory(prefix="ratelane-cli-scale-") as directory:
        root = Path(directory)
        source = root / "input.jsonl"
        output = root / "output.jsonl"
        began = time.perf_counter()
        generate(source, lines)
        size_mb = source.stat().st_size / 1e6
        print(f"input: {lines:,} lines, {size_mb:,.0f} MB ({time.perf_counter() - began:.1f} s)")

        server_argv = [sys.executable, "-m", "ratelane", "fake-server", "--port", "0",
                       "--ledger-limit", "0", "--store-limit", "1", "--unlimited"]  # fmt: skip
        with subprocess.Popen(server_argv, stdout=subprocess.PIPE, text=True) as server:
            try:
                assert server.stdout is not None
                info: dict[str, Any] = json.loads(server.stdout.readline())
                env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
                env.update(OPENAI_API_KEY=info["api_key"], OPENAI_BASE_URL=info["base_url"])
                concurrency = str(options.max_concurrency)
                run = [sys.executable, "-m", "ratelane", "run", str(source), "-o", str(output),
                       "--max-concurrency", concurrency, "--no-progress"]  # fmt: skip

                validate = measure("validate (--dry-run)", [*run, "--dry-run", "--model", "m"], env)
                full = measure("run (all lines)", run, env)
                done = output.read_bytes().count(b"\n")
                keep_first_lines(output, lines - pending)
                resume = measure("resume", run, env, admin_url=info["admin_url"])
                finished = output.read_bytes().count(b"\n")
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(30)

    print(f"{'phase':<22} {'exit':>4} {'seconds':>9} {'lines/s':>10} {'peak RSS':>10}")
    for phase, count in ((validate, lines), (full, lines), (resume, pending)):
        rate = count / phase.seconds if phase.seconds else 0.0
        print(
            f"{phase.name:<22} {phase.exit_code:>4} {phase.seconds:>9.2f} {rate:>10,.0f} "
            f"{phase.peak_rss_mb:>8.1f} MB"
        )
    print(f"run wrote {done:,} success lines; after resume OUTPUT has {finished:,}")
    if resume.first_request_s is not None:
        print(
            f"resume with {lines - pending:,} of {lines:,} done: first request sent after "
            f"{resume.first_request_s:.2f} s (process start included)"
        )
    summary = {
        "lines": lines,
        "pending": pending,
        "validate_lines_per_s": round(lines / validate.seconds),
        "run_seconds": round(full.seconds, 2),
        "run_lines_per_s": round(lines / full.seconds),
        "run_peak_rss_mb": round(full.peak_rss_mb, 1),
        "resume_first_request_s": resume.first_request_s and round(resume.first_request_s, 2),
        "resume_seconds": round(resume.seconds, 2),
        "resume_peak_rss_mb": round(resume.peak_rss_mb, 1),
    }
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
