"""Scenario 6, huge file: a 1,000,000-line input through the CLI, then resume.

The measurement belongs to ``benchmarks/cli_scale.py`` (written with the CLI):
in full mode this runs that script in a fresh process, on every CPU this
suite was given (it places its own server and CLI processes), and reports
what it prints, checking its JSON summary against the issue's targets. Quick
mode only says where it lives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from _bench import BENCH_DIR, Context, report, target

NAME = "huge_file"
SCRIPT = BENCH_DIR / "cli_scale.py"
TIME_LIMIT_S = 1_800
RSS_TARGET_MB = 200
RESUME_TARGET_S = 2


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    lines = summary.get("lines", 0)
    done = lines - summary.get("pending", 0)
    rows = []
    peaks = [summary.get(key) for key in ("run_peak_rss_mb", "resume_peak_rss_mb")]
    measured = [peak for peak in peaks if isinstance(peak, int | float)]
    if measured:
        rows.append(
            target(
                f"peak RSS, {lines:,}-line CLI run and resume",
                f"< {RSS_TARGET_MB} MB",
                f"{max(measured):.1f} MB",
                max(measured) < RSS_TARGET_MB,
            )
        )
    resume_s = summary.get("resume_first_request_s")
    if isinstance(resume_s, int | float):
        rows.append(
            target(
                f"resume start-up with {done:,} of {lines:,} done",
                f"< {RESUME_TARGET_S} s",
                f"{resume_s:.2f} s to the first request (process start included)",
                resume_s < RESUME_TARGET_S,
            )
        )
    return rows


def run(ctx: Context) -> dict[str, Any]:
    title = "6. Huge file (1,000,000 lines through the CLI, then resume)"
    if not SCRIPT.exists() or ctx.quick:
        note = (
            "see benchmarks/cli_scale.py (run only in full mode)"
            if SCRIPT.exists()
            else "not measured: benchmarks/cli_scale.py does not exist yet"
        )
        return report(NAME, title, config={}, columns=[], rows=[], figures={"status": note},
                      notes=[note])  # fmt: skip
    ctx.log(f"running {SCRIPT.name} (up to {TIME_LIMIT_S} s)")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if ctx.placement.all_cpus:
        # Undo the client pinning this process passed on: the script starts its own
        # server and CLI processes and must not squeeze them onto one CPU.
        os.sched_setaffinity(process.pid, ctx.placement.all_cpus)
    try:
        stdout, stderr = process.communicate(timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    output = stdout.decode().strip().splitlines()
    summary: dict[str, Any] = {}
    if output:
        try:
            summary = json.loads(output[-1])
            output = output[:-1]
        except ValueError:
            pass
    figures: dict[str, Any] = {"exit_code": process.returncode, "summary": summary}
    if process.returncode != 0:
        figures["stderr"] = stderr.decode()[-2000:]
        raise RuntimeError(f"cli_scale.py exited {process.returncode}: {figures['stderr']}")
    return report(
        NAME,
        title,
        config={"script": str(SCRIPT)},
        columns=["cli_scale.py output"],
        rows=[[line] for line in output[-30:]],
        figures=figures,
        targets=_targets(summary),
        notes=["from benchmarks/cli_scale.py, run on all CPUs (it places its own processes)"],
    )
