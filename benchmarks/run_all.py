"""ratelane's benchmark suite: one command, a table, ``results.json`` and PNG plots.

    .venv/bin/python benchmarks/run_all.py [--quick | --smoke] [--only NAME ...] [--out DIR]

Every scenario starts its own fake server process (``ratelane fake-server``)
and runs every measured client in a fresh process, so client and server never
share an event loop; see ``_bench.py``. ``--quick`` shrinks every scenario
(about a minute in all); ``--smoke`` shrinks them further and runs servers
and clients as threads of one process, proving every scenario still runs in a
few seconds (the test suite's check; its figures mean nothing). The full suite
takes several minutes. Absolute numbers depend on the machine; the ratios against the
baselines measured in the same run are what matter.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _plots
import scenario_batch
import scenario_fanout
import scenario_faults
import scenario_gateway
import scenario_huge_file
import scenario_limit_change
import scenario_outage
import scenario_overhead
import scenario_redis
import scenario_remembered
import scenario_request_limit
import scenario_token_limit
from _bench import BENCH_DIR, Context, Placement, use_one_process

SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    module.NAME: module.run
    for module in (
        scenario_overhead,
        scenario_request_limit,
        scenario_token_limit,
        scenario_limit_change,
        scenario_fanout,
        scenario_huge_file,
        scenario_faults,
        scenario_gateway,
        scenario_batch,  # Batch API mode (issue 11)
        scenario_remembered,
        scenario_outage,
        scenario_redis,
    )
}


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))

    print("  " + line(columns))
    print("  " + "  ".join("-" * width for width in widths))
    for row in rows:
        print("  " + line(row))


def print_scenario(result: dict[str, Any], out: Path) -> None:
    print(f"\n{result['title']}")
    table = result["table"]
    if table["rows"]:
        print_table(table["columns"], table["rows"])
    for note in result["notes"]:
        print(f"  note: {note}")
    for plot in result["plots"]:
        print(f"  plot: {out / plot}")


def print_targets(results: dict[str, dict[str, Any]]) -> None:
    rows = []
    for result in results.values():
        for row in result.get("targets", []):
            verdict = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
            rows.append([row["target"], row["goal"], row["measured"], verdict])
    if rows:
        print("\nTargets")
        print_table(["target", "goal", "measured", "verdict"], rows)


def run_one(
    name: str, ctx: Context, *, announce: bool = False
) -> tuple[dict[str, Any] | None, str]:
    """Run one scenario: ``(result, "")``, or ``(None, error)`` when it raised."""
    if announce:
        print(f"\n== {name}", flush=True)
    started = time.perf_counter()
    try:
        result = SCENARIOS[name](ctx)
    except Exception as exc:  # a broken scenario must not hide the others
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small counts, about a minute")
    size.add_argument("--smoke", action="store_true",
                      help="tiny counts, one process: proves the scripts run")  # fmt: skip
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output directory")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        use_one_process()
        placement = Placement(None, None)
    else:
        placement = Placement.pin()
    quick = args.quick or args.smoke
    ctx = Context(quick=quick, out_dir=args.out, placement=placement, smoke=args.smoke)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(f"ratelane benchmarks ({mode} mode) on {platform.platform()}, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"placement: {placement.describe()}")
    if _plots.UNAVAILABLE:
        print(f"note: {_plots.UNAVAILABLE}")
    document: dict[str, Any] = {
        "meta": {
            "mode": mode,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "placement": placement.describe(),
            "plots": _plots.UNAVAILABLE or "written",
        },
        "scenarios": {},
        "errors": {},
    }
    results_path = args.out / "results.json"
    names = args.only or list(SCENARIOS)
    suite_started = time.perf_counter()
    if args.smoke:
        # Nothing is measured: run the scenarios side by side (mostly waiting on timers).
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = {name: pool.submit(run_one, name, ctx) for name in names}
        outcomes = [(name, *futures[name].result()) for name in names]
    else:
        outcomes = ((name, *run_one(name, ctx, announce=True)) for name in names)
    for name, result, error in outcomes:
        if result is None:
            document["errors"][name] = error
        else:
            # File names, relative to results.json, so the directory can move.
            result["plots"] = [Path(plot).name for plot in result["plots"]]
            document["scenarios"][name] = result
            if args.smoke:
                print(f"\n== {name}")
            print_scenario(result, args.out)
        document["meta"]["seconds"] = round(time.perf_counter() - suite_started, 1)
        results_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print_targets(document["scenarios"])
    print(f"\nresults: {results_path} ({document['meta']['seconds']} s)")
    if document["errors"]:
        print(f"FAILED scenarios: {', '.join(document['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
