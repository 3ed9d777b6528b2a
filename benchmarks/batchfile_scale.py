"""How the file layer scales: validation, the done-set and resume on a million lines.

Generates, in a temporary directory, an input of ``--lines`` Batch-format
requests (~370 bytes each) and an OUTPUT holding success lines (~1.2 KB, a
realistic Responses body) for all but the last ``--pending`` of them. Then it
runs each phase in a fresh subprocess, so one phase's memory cannot hide
another's, and prints:

- validate: ``validate_batch_file`` lines/s and peak RSS;
- done-set: ``DoneSet.from_output`` build time, ids/s and peak RSS;
- resume: done-set build plus ``iter_batch_requests(skip=done.__contains__)``
  until the first pending line is yielded (the worst case: it is the last
  block of the file), and until all pending lines are read.

"Extra RSS" is ``ru_maxrss`` at the end of a phase minus ``ru_maxrss`` just
before it (after imports). Usage::

    .venv/bin/python benchmarks/batchfile_scale.py [--lines 1000000] [--pending 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ratelane._files.checkpoint import DoneSet
from ratelane._files.input import iter_batch_requests, validate_batch_file

INPUT_NAME = "input.jsonl"
OUTPUT_NAME = "output.jsonl"


def _maxrss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 / (1 << 20) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def generate(directory: Path, lines: int, pending: int) -> None:
    body = (
        '{"model": "gpt-5-mini", "input": "Summarise item %d in one sentence: '
        + "lorem ipsum dolor sit amet " * 7
        + '", "max_output_tokens": 200}'
    )
    line = '{"custom_id": "request-%d", "method": "POST", "url": "/v1/responses", "body": ' + body
    template = (line + "}\n").encode()
    with (directory / INPUT_NAME).open("wb") as file:
        for number in range(lines):
            file.write(template % (number, number))
    response = (
        '{"id": "resp_%032x", "object": "response", "created_at": 1760000000, '
        '"status": "completed", "model": "gpt-5-mini-2025-08-07", "output": [{"type": '
        '"message", "id": "msg_%032x", "status": "completed", "role": "assistant", "content": '
        '[{"type": "output_text", "text": "' + "A one-sentence summary. " * 20 + '", '
        '"annotations": []}]}], "usage": {"input_tokens": 80, "input_tokens_details": '
        '{"cached_tokens": 0}, "output_tokens": 120, "output_tokens_details": '
        '{"reasoning_tokens": 64}, "total_tokens": 200}, "tool_choice": "auto", "tools": [], '
        '"text": {"format": {"type": "text"}}, "truncation": "disabled", "metadata": {}}'
    )
    output = (
        '{"id": "batch_req_%032x", "custom_id": "request-%d", "response": {"status_code": 200, '
        '"request_id": "req_%032x", "body": ' + response + '}, "error": null, '
        '"ratelane": {"attempts": 1, "latency_s": 0.8, "dropped_params": []}}\n'
    ).encode()
    with (directory / OUTPUT_NAME).open("wb") as file:
        for number in range(lines - pending):
            file.write(output % (number, number, number, number, number))


def phase_validate(directory: Path) -> dict[str, Any]:
    started = time.perf_counter()
    report = validate_batch_file(directory / INPUT_NAME)
    elapsed = time.perf_counter() - started
    assert report.ok, report.describe()
    return {"lines": report.lines, "seconds": elapsed, "lines_per_s": report.lines / elapsed}


def phase_done_set(directory: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = DoneSet.from_output(directory / OUTPUT_NAME)
    elapsed = time.perf_counter() - started
    return {"done": len(done), "seconds": elapsed, "ids_per_s": len(done) / elapsed}


def phase_resume(directory: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = DoneSet.from_output(directory / OUTPUT_NAME)
    built = time.perf_counter()
    pending = iter_batch_requests(directory / INPUT_NAME, skip=done.__contains__)
    first = next(pending)
    first_at = time.perf_counter()
    remaining = 1 + sum(1 for _ in pending)
    finished = time.perf_counter()
    return {
        "done": len(done),
        "done_set_seconds": built - started,
        "first_pending_line": first.line_number,
        "first_pending_after_s": first_at - started,
        "skip_scan_seconds": first_at - built,
        "pending": remaining,
        "all_pending_after_s": finished - started,
    }


PHASES = {"validate": phase_validate, "done-set": phase_done_set, "resume": phase_resume}


def run_phase(name: str, directory: Path) -> None:
    before = _maxrss_mb()
    figures = PHASES[name](directory)
    figures["peak_rss_mb"] = _maxrss_mb()
    figures["extra_rss_mb"] = figures["peak_rss_mb"] - before
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=1_000)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="ratelane-bench-") as temp:
        directory = Path(temp)
        started = time.perf_counter()
        generate(directory, args.lines, args.pending)
        sizes = {
            name: (directory / name).stat().st_size / 1e6 for name in (INPUT_NAME, OUTPUT_NAME)
        }
        print(
            f"generated {args.lines:,} input lines ({sizes[INPUT_NAME]:.0f} MB) and "
            f"{args.lines - args.pending:,} output lines ({sizes[OUTPUT_NAME]:.0f} MB) "
            f"in {time.perf_counter() - started:.1f}s"
        )
        for name in PHASES:
            completed = subprocess.run(
                [sys.executable, __file__, "--phase", name, "--dir", str(directory)],
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(completed.stdout)
            shown = ", ".join(
                f"{key}={value:,.2f}" if isinstance(value, float) else f"{key}={value:,}"
                for key, value in figures.items()
            )
            print(f"{name:9} {shown}")


if __name__ == "__main__":
    main()
