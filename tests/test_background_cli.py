"""Background mode through ``ratelane run --background``, against the fake server's lifecycle.

The crash test: SIGKILL while every response is still running on the server,
then resume. Each line must end in OUTPUT exactly once and be created exactly
once (the server's ledger), its id re-attached from ``OUTPUT.pending.jsonl``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from _inprocess_cli import InProcessCli
from ratelane import ExitReason, FileRun, FileRunOptions
from ratelane._state.pending import PendingJournal, pending_path
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


@pytest.mark.parametrize("cancel_on_exit", [False, True])
async def test_stop_leaves_responses_running_or_cancels_them(
    tmp_path: Path, cancel_on_exit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 8)
    async with FakeOpenAI(
        api_key=KEY, latency=Latency(0.0), background=Background(queued_s=0.0, in_progress_s=60)
    ) as server:
        options = FileRunOptions(api_key=KEY, base_url=server.base_url, background=True,
                                 cancel_on_exit=cancel_on_exit)  # fmt: skip
        file_run = FileRun(source, output, options=options)
        all_created = asyncio.Event()
        record = PendingJournal.record

        def recorded(journal: PendingJournal, custom_id: str, response_id: str) -> None:
            record(journal, custom_id, response_id)
            if len(journal) == len(ids):
                all_created.set()

        monkeypatch.setattr(PendingJournal, "record", recorded)
        task = asyncio.ensure_future(file_run.run())
        await asyncio.wait_for(all_created.wait(), 5)
        file_run.stop()
        summary = await asyncio.wait_for(task, 5)
        assert summary.reason is ExitReason.STOPPED and summary.not_sent == len(ids)
        kept = PendingJournal(pending_path(output)).open()
        cancels = [entry for entry in server.ledger.entries if entry.path.endswith("/cancel")]
        if cancel_on_exit:
            assert len(cancels) == len(ids) and len(kept) == 0  # created again on resume
        else:
            assert cancels == [] and len(kept) == len(ids)  # left running: resume re-attaches
