"""Background mode through ``ratelane run --background``, against the fake server's lifecycle.

The crash test: SIGKILL while every response is still running on the server,
then resume. Each line must end in OUTPUT exactly once and be created exactly
once (the server's ledger), its id re-attached from ``OUTPUT.pending.jsonl``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from _inprocess_cli import InProcessCli
from ratelane.testing import Background, FakeOpenAI, Latency
from test_cli_resume import (
    KEY,
    Running,
    assert_each_once,
    cli_env,
    command,
    line_count,
    start,
    wait_until,
    write_input,
)

__all__ = ["start"]  # the fixture, imported


def creates(server: FakeOpenAI) -> Counter[str | None]:
    return Counter(
        entry.custom_id
        for entry in server.ledger.entries
        if entry.method == "POST" and entry.path == "/v1/responses" and entry.status == 200
    )


def polls(server: FakeOpenAI) -> int:
    return sum(1 for entry in server.ledger.entries if entry.method == "GET")


def test_sigkill_during_background_run_then_resume_creates_each_line_once(
    tmp_path: Path, start: Callable[..., Running], in_process_cli: InProcessCli
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.pending.jsonl"
    ids = write_input(source, 60)
    # Each response runs 1 s on the server: the kill lands while all of them run.
    fake = FakeOpenAI(
        api_key=KEY,
        latency=Latency(0.002, sigma=0.0),
        background=Background(queued_s=0.1, in_progress_s=0.9),
    )
    with fake.run_in_thread() as server:
        env = cli_env(server)
        argv = command("run", source, "-o", output, "--background", "--no-progress")
        running = start(argv, env)
        wait_until(lambda: line_count(journal) >= len(ids), "every id journaled", process=running)
        running.kill()
        assert line_count(output) < len(ids)  # killed mid-run: something left to re-attach
        assert sorted(creates(server)) == sorted(ids)
        journaled = {
            line["custom_id"]: line["id"]
            for line in map(orjson.loads, journal.read_bytes().splitlines())
        }
        ran = in_process_cli(*argv[3:], env=env)
        assert ran.returncode == 0, ran.stderr
        assert_each_once(output, ids)
        assert creates(server) == Counter(ids)  # the resume created nothing
        for line in map(orjson.loads, output.read_bytes().splitlines()):
            body = line["response"]["body"]
            assert body["status"] == "completed" and body["output"]
            assert body["id"] == journaled[line["custom_id"]]  # the very response created
        assert polls(server) <= len(ids) * (3 + 3)  # at most 3 + 1 per second of life
