"""``ratelane run --redis-url`` and ``--shard I/N`` end to end (issue 13): real processes,
a real Redis (``_redis_server.py``) and the fake server, whose ledger says what it admitted.

Compressed scale, stated: the issue's 4 processes x 500 lines at 3,000 rpm take 40 s of
wall time. Here the same structure (4 ``ratelane run`` processes, 500 lines each, one
budget, the fake server's 1 s quantum) runs at 10x the rate: 30,000 rpm and 2,500,000 tpm
(3,000 rpm and 250,000 tpm, times 10), so 2,000 requests take about 4 s. Every bound
below is relative to the limit, so it means the same at either scale.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from _inprocess_cli import InProcessCli
from _rate_windows import busiest_window
from _redis_server import RedisServer, open_together, redis_server
from ratelane._files.shard import shard_of
from ratelane.testing import FakeOpenAI, Latency

__all__ = ["redis_server"]

SCALE = 10
RPM = 3000 * SCALE
TPM = 250_000 * SCALE
PROCESSES = 4
LINES = 500
MODEL = "gpt-4.1-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """The fake server on its own thread: the in-process CLI runs its own event loop."""
    with FakeOpenAI().run_in_thread() as running:
        yield running


def _write_input(path: Path, ids: Sequence[str]) -> None:
    with path.open("wb") as file:
        for custom_id in ids:
            body = {
                "model": MODEL,
                "input": f"Say hello to {custom_id}.",
                "max_output_tokens": 16,
                "metadata": {"custom_id": custom_id},  # the fake server's ledger records it
            }
            line = {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}
            file.write(orjson.dumps(line) + b"\n")


def _ids(path: Path) -> list[str]:
    return [orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines() if line]


@pytest.mark.slow
def test_four_processes_share_one_budget_at_the_limit(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with FakeOpenAI(rpm=RPM, tpm=TPM, latency=Latency(0.05), seed=1).run_in_thread() as server:
        env = {
            **os.environ,
            "OPENAI_API_KEY": server.api_key,
            "OPENAI_BASE_URL": server.base_url,
            "RATELANE_REDIS_URL": redis_server.url,  # the environment's way; the flag below
        }
        runs = []
        for index in range(PROCESSES):
            source = tmp_path / f"in.{index}.jsonl"
            _write_input(source, [f"p{index}-{line}" for line in range(LINES)])
            output = tmp_path / f"out.{index}.jsonl"
            command = [sys.executable, "-m", "ratelane", "run", source, "-o", output]
            if index % 2:
                command += ["--redis-url", redis_server.url]
            runs.append(
                (
                    output,
                    subprocess.Popen(
                        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                    ),
                )
            )
        asyncio.run(open_together(redis_server.url, server.api_key, PROCESSES))
        warnings = []
        for output, process in runs:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr.decode()
            assert len(set(_ids(output))) == LINES
            warnings += [line for line in stderr.decode().splitlines() if "warning" in line]
        entries = [entry for entry in server.ledger.entries if entry.path == "/v1/responses"]
    assert len(entries) >= PROCESSES * LINES
    rejected = sum(1 for entry in entries if entry.status == 429)
    kinds = sorted({line.split(":")[2][:40] for line in warnings})
    assert rejected <= 0.01 * len(entries), (rejected, len(warnings), kinds)
    admitted = sorted(entry.time_s for entry in entries if entry.admitted)
    per_s = RPM / 60
    # Steady state: while all four run (the processes start one after the other on a
    # loaded machine, and finish one after the other), each with more work than the
    # budget allows: together they run at the limit.
    spans = [
        [e.time_s for e in entries if (e.custom_id or "").startswith(f"p{index}-")]
        for index in range(PROCESSES)
    ]
    first = max(min(span) for span in spans) + 0.2  # the last one to start got going
    last = min(max(span) for span in spans)
    assert last - first > 0.5, (first, last)  # a real overlap to measure
    steady = [time for time in admitted if first <= time <= last]
    achieved = len(steady) / (last - first)
    assert achieved >= 0.97 * per_s, (achieved, per_s, last - first)
    # The short-period quantum, across all four: in no 1 s window did the server get more
    # than its burst (a 1 s quantum of the limit) plus a second of refill. (The shared
    # bucket's own bound, 0.5 s of the rate plus a second, is checked on Redis' clock in
    # test_redis_budget.py; arrival times here carry each process's and the server's
    # loop delays.)
    busiest = busiest_window(admitted, 1.0)[0]
    assert busiest <= 2 * per_s, busiest
    # Each process got a fair part: nobody starved.
    counts = [sum(1 for e in entries if (e.custom_id or "").startswith(f"p{i}-")) for i in range(4)]
    assert min(counts) >= LINES, counts


def test_redis_unreachable_at_start_exits_2_and_sends_nothing(
    in_process_cli: InProcessCli, server: FakeOpenAI, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = tmp_path / "in.jsonl"
    _write_input(source, ["a", "b"])
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    env = {"OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url}
    ran = in_process_cli("run", source, "-o", tmp_path / "out.jsonl", "--redis-url", url, env=env)
    assert ran.returncode == 2, ran.stderr
    assert f"redis://:***@127.0.0.1:{port}/0" in ran.stderr and "hunter2" not in ran.stderr
    assert "HINT" in ran.stderr and "nothing was sent" in ran.stderr
    assert server.ledger.total == 0


def test_four_shards_and_merge_give_every_custom_id_once(
    in_process_cli: InProcessCli, server: FakeOpenAI, tmp_path: Path
) -> None:
    ids = [f"q{index}" for index in range(120)]
    source = tmp_path / "in.jsonl"
    _write_input(source, ids)
    env = {"OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url}
    dry = in_process_cli(
        "run", source, "-o", tmp_path / "o.jsonl", "--dry-run", "--shard", "1/4", env={}
    )
    ones = sum(shard_of(custom_id, 4) == 1 for custom_id in ids)
    assert (
        f"0 of {ones} lines of shard 1/4 already have a success; {ones} would be sent" in dry.stdout
    )
    outputs = []
    for shard in range(4):
        output = tmp_path / f"out.{shard}.jsonl"
        ran = in_process_cli("run", source, "-o", output, "--shard", f"{shard}/4", env=env)
        assert ran.returncode == 0, ran.stderr
        mine = [custom_id for custom_id in ids if shard_of(custom_id, 4) == shard]
        assert sorted(_ids(output)) == sorted(mine)
        assert re.search(rf"shard +{shard}/4: {len(mine)} of INPUT's 120 lines", ran.stderr)
        assert f"{len(mine):,} ok, 0 failed, 0 skipped (already in OUTPUT) of {len(mine)}" in (
            ran.stderr
        )
        outputs.append(output)
    # Each request was sent by exactly one shard.
    sent = [entry.custom_id for entry in server.ledger.entries]
    assert sorted(sent) == sorted(ids)
    # A resume of one shard sends nothing and counts only its own lines.
    again = in_process_cli("run", source, "-o", outputs[1], "--shard", "1/4", env=env)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    merged = tmp_path / "merged.jsonl"
    ran = in_process_cli("merge", *outputs, "-o", merged, "--input", source, env=env)
    assert ran.returncode == 0, ran.stderr
    assert sorted(_ids(merged)) == sorted(ids)
    assert len(_ids(merged)) == len(ids)


def test_a_bad_shard_is_a_usage_error(in_process_cli: InProcessCli, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    _write_input(source, ["a"])
    ran = in_process_cli("run", source, "-o", tmp_path / "o.jsonl", "--shard", "4/4", env={})
    assert ran.returncode == 2 and "0 <= I < N" in ran.stderr
