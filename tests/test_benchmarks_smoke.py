"""The benchmark suite never rots: its smoke level runs every scenario end to end,
and the functions that turn server ledgers into figures are checked on known inputs.

The smoke level (``run_all.py --smoke``) runs tiny sizes with servers and
clients as threads of one process, so it proves the scripts run (every
scenario, every client variant, the plots when matplotlib is there) in
seconds; its figures mean nothing, so only their shape and the outcomes are
checked, never performance. ``--quick`` and the full run are for people.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCENARIOS = (
    "overhead",
    "request_limit",
    "token_limit",
    "limit_change",
    "fanout",
    "huge_file",
    "faults",
    "gateway",
    "batch",
    "remembered",
    "outage",
    "redis",
)


def _bench_module(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


# -- the figures' arithmetic ------------------------------------------------------


def test_steady_drops_head_and_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench_module(monkeypatch, "_bench")
    assert bench.steady([1, 2, 3, 4, 5, 6], 2, 1) == ([3, 4, 5], True)
    assert bench.steady([1, 2, 3], 2, 1) == ([2], False)
    assert bench.trim_idle([3, 4, 0, 0]) == [3, 4]


def test_windows_count_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench_module(monkeypatch, "_bench")
    series = [1] * 300  # one request every 10 ms for 3 s
    found = list(bench.windows(series, 0.01, 1.0, 3.0))
    assert found[0] == (1.0, 100)
    assert found[-1][0] == pytest.approx(2.0)
    assert all(count == 100 for _, count in found)


def test_adaptation_waits_for_the_rate_and_the_last_429(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = _bench_module(monkeypatch, "scenario_limit_change")
    # 50 requests/s for 5 s, then 25/s (one every 4 slots) for 10 s.
    admitted = [1 if i % 2 == 0 else 0 for i in range(500)]
    admitted += [1 if i % 4 == 0 else 0 for i in range(1000)]
    refused = [0] * 1500
    assert scenario.adaptation_s(admitted, refused, 5.0, 15.0, 1500) == pytest.approx(0.0)
    refused[600] = 1  # a 429 at 6.0 s: adapted only from the window after it
    assert scenario.adaptation_s(admitted, refused, 5.0, 15.0, 1500) == pytest.approx(1.01)
    # Never within 5% of a limit it does not reach.
    assert scenario.adaptation_s(admitted, [0] * 1500, 5.0, 15.0, 3000) is None


def test_gateway_time_to_share(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = _bench_module(monkeypatch, "scenario_gateway")
    # 0.1 s slots: 2 per slot (20/s) for 1 s, 1 per slot (10/s) for 3 s, then 20/s for 6 s.
    series = [2] * 10 + [1] * 30 + [2] * 60
    # The opening burst holds for 0.3 s only; 18 per window from the window [3.8, 4.8) on.
    assert scenario.time_to_share(series, 20.0, hold_s=5.0) == pytest.approx(3.8)
    assert scenario.time_to_share(series, 20.0, hold_s=1.0) == pytest.approx(0.0)
    assert scenario.time_to_share(series, 10.0, hold_s=5.0) == pytest.approx(0.0)
    assert scenario.time_to_share([1] * 30, 20.0) is None


def test_server_flags_default_to_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench_module(monkeypatch, "_bench")
    assert "--unlimited" in bench.server_command_args({"latency": 0.5})
    flags = bench.server_command_args({"rpm": 600, "first_window_used": True, "x": False})
    assert "--unlimited" not in flags
    assert flags[-3:] == ["--rpm", "600", "--first-window-used"]


def test_fanout_timeline(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = _bench_module(monkeypatch, "scenario_fanout")
    # A probe at 0 s answered at 1 s, then 99 requests over 0.05 s, each taking 1 s.
    series = [1] + [0] * 99 + [20, 20, 20, 20, 19] + [0] * 200
    timeline = scenario._timeline(series, 100, 1.0)
    assert timeline["bulk_start_s"] == pytest.approx(1.0)
    assert timeline["all_sent_s"] == pytest.approx(0.05)
    assert timeline["max_in_flight"] == 99


# -- the smoke level, end to end ----------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, float]:
    out = tmp_path_factory.mktemp("bench")
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    seconds = time.perf_counter() - started
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Targets" in completed.stdout
    results = json.loads((out / "results.json").read_text())
    return results, out, seconds


@pytest.mark.slow  # the shared run_all.py --smoke takes 4-6 s
def test_smoke_suite_runs_every_scenario(smoke_results: tuple[dict[str, Any], Path, float]) -> None:
    results, out, seconds = smoke_results
    assert results["errors"] == {}
    assert set(results["scenarios"]) == set(SCENARIOS)
    assert results["meta"]["mode"] == "smoke"
    for scenario in results["scenarios"].values():
        for row in scenario["targets"]:
            assert row["met"] in (True, False, None)
            assert row["measured"]
        for plot in scenario["plots"]:
            assert (out / plot).is_file()
    print(f"smoke benchmark suite: {seconds:.1f} s")


@pytest.mark.slow  # the shared run_all.py --smoke takes 4-6 s
def test_smoke_suite_outcomes(smoke_results: tuple[dict[str, Any], Path, float]) -> None:
    scenarios = smoke_results[0]["scenarios"]

    variants = scenarios["overhead"]["figures"]["variants"]
    for name in ("raw", "ratelane", "sdk", "cli"):
        assert variants[name]["failed"] == 0
        assert variants[name]["cpu_us_per_request"] > 0

    for name in ("request_limit", "token_limit"):
        for variant in ("ratelane", "sdk"):
            assert scenarios[name]["figures"][variant]["server_requests"] > 0
        assert scenarios[name]["figures"]["ratelane"]["failed"] == 0

    change = scenarios["limit_change"]["figures"]
    assert change["down"]["change_at_s"] < change["up"]["change_at_s"]

    fanout = scenarios["fanout"]["figures"]
    assert fanout["ratelane"]["failed"] == 0
    assert (
        fanout["ratelane"]["kb_per_inflight_request"]
        == fanout["ratelane"]["kb_per_inflight_request"]
    )  # a number, not NaN

    faults = scenarios["faults"]["figures"]
    assert faults["clean"]["completion"] == 1.0
    assert faults["faulty"]["attempts_per_request"] >= 1.0

    gateway = scenarios["gateway"]["figures"]
    for case in ("litellm_key", "unannounced", "used_window"):
        assert (
            gateway[case]["server_requests"] >= gateway["requests"]
            or gateway[case]["stopped_at_cap"]
        )
    assert gateway["used_window"]["rate_limited"] >= 1  # the used-up minute answered 429
