"""``ratelane.run_file`` / ``arun_file`` / ``FileRun``: a file run from Python, in-process.

Against the fake server on 127.0.0.1 over real sockets. What the CLI adds on
top (signals, terminal, exit codes) is tested in ``test_cli_*.py``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

import ratelane
from ratelane import ExitReason, FileRun, FileRunOptions, InputError
from ratelane._files.validated import sidecar_path
from ratelane.testing import FakeOpenAI, Faults

MODEL = "gpt-4.1-mini"


def write_input(path: Path, count: int, *, start: int = 0) -> list[str]:
    ids = [f"r-{n}" for n in range(start, start + count)]
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "custom_id": custom_id,
                    "method": "POST",
                    "url": "/v1/responses",
                    "body": {
                        "model": MODEL,
                        "input": f"say {custom_id}",
                        "metadata": {"custom_id": custom_id},
                    },
                }
            )
            + b"\n"
            for custom_id in ids
        )
    )
    return ids


def output_ids(path: Path) -> list[str]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [orjson.loads(raw)["custom_id"] for raw in data.splitlines()]


def options(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"api_key": server.api_key, "base_url": server.base_url, "progress": False, **extra}


async def test_a_stopped_run_is_resumed_by_the_same_call_and_nothing_is_written_twice(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 300)
    seen = 0

    def stop_after_50(result: ratelane.Result) -> None:
        nonlocal seen
        seen += 1
        if seen == 50:
            first.stop()

    run_options = FileRunOptions(**options(fake_openai, max_concurrency=8))
    first = FileRun(source, output, options=run_options, on_result=stop_after_50)
    stopped = await first.run()
    assert stopped.reason is ExitReason.STOPPED
    assert not stopped.ok
    kept = output_ids(output)
    # Graceful: the requests in flight at stop() finish and are written, nothing more is sent.
    assert 50 <= len(kept) <= 50 + 8
    assert stopped.succeeded == len(kept) == fake_openai.ledger.total
    assert stopped.not_sent == len(ids) - len(kept)
    assert stopped.remaining == stopped.not_sent

    again = await ratelane.arun_file(source, output, **options(fake_openai))
    assert again.reason is ExitReason.COMPLETED and again.ok
    assert again.skipped == len(kept)
    assert again.succeeded == len(ids) - len(kept)
    assert again.revalidated is False  # INPUT unchanged since the first run validated it
    assert sorted(output_ids(output)) == sorted(ids)
    assert fake_openai.ledger.total == len(ids)  # every request sent exactly once

    nothing = await ratelane.arun_file(source, output, **options(fake_openai))
    assert nothing.reason is ExitReason.COMPLETED
    assert (nothing.skipped, nothing.succeeded, nothing.stats.completed) == (len(ids), 0, 0)
    assert fake_openai.ledger.total == len(ids)


def test_run_file_works_inside_a_running_loop_like_a_notebook(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 20)
    with FakeOpenAI().run_in_thread() as server:

        async def cell() -> ratelane.FileRunSummary:
            # A notebook cell: an event loop is running, and the blocking call still works.
            return ratelane.run_file(source, output, **options(server))

        summary = asyncio.run(cell())
    assert summary.ok
    assert sorted(output_ids(output)) == sorted(ids)
    assert summary.errors_path == tmp_path / "out.errors.jsonl"


async def test_abort_cancels_requests_in_flight_and_they_are_sent_again(
    tmp_path: Path,
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 40)
    stalled = FakeOpenAI(faults=Faults(stall=1.0, stall_s=60, stall_then="answer"))
    with stalled.run_in_thread() as server:  # its exit does not wait for stalled answers
        file_run = FileRun(source, output, options=FileRunOptions(**options(server)))
        task = asyncio.ensure_future(file_run.run())
        # Requests go out and stall at the server; nothing signals that, so poll (bounded).
        async with asyncio.timeout(10):
            while file_run.in_flight < 10:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        in_flight = file_run.in_flight
        assert file_run.abort() is True
        assert file_run.abort() is False  # once
        summary = await asyncio.wait_for(task, 5)
    assert summary.reason is ExitReason.STOPPED
    assert summary.abandoned >= in_flight
    kept = output_ids(output)
    assert summary.succeeded == len(kept) < len(ids)
    async with FakeOpenAI() as healthy:
        resumed = await ratelane.arun_file(source, output, **options(healthy))
    assert resumed.ok
    assert healthy.ledger.total == len(ids) - len(kept)
    assert sorted(output_ids(output)) == sorted(ids)


async def test_invalid_input_raises_input_error_with_the_report_and_creates_nothing(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, 3)
    with source.open("ab") as file:
        file.write(b'{"custom_id": "x", "method": "GET", "url": "/v1/responses", "body": {}}\n')
    with pytest.raises(InputError) as raised:
        await ratelane.arun_file(source, output, **options(fake_openai))
    report = raised.value.report  # type: ignore[attr-defined]
    assert report.problems[0][0] == 4
    assert "line 4" in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]
    assert fake_openai.ledger.total == 0


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
async def test_an_empty_input_raises_and_creates_nothing(
    tmp_path: Path, fake_openai: FakeOpenAI, content: bytes
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(content)
    with pytest.raises(InputError, match="holds no requests"):
        await ratelane.arun_file(source, output, **options(fake_openai))
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


# --------------------------------------------------------------------------- validation memory


async def test_an_unchanged_input_is_not_validated_again_and_any_change_is(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, 30)
    first = await ratelane.arun_file(source, output, **options(fake_openai))
    assert first.revalidated and sidecar_path(output).exists()
    second = await ratelane.arun_file(source, output, **options(fake_openai))
    assert not second.revalidated

    # An edit that keeps size and mtime: only the digest can tell.
    stat = source.stat()
    data = source.read_bytes()
    edited = data.replace(b'"method":"POST"', b'"method":"PUT!"', 1)
    assert len(edited) == len(data)
    source.write_bytes(edited)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(InputError, match='line 1: "method" is "PUT!"'):
        await ratelane.arun_file(source, output, **options(fake_openai))

    # Appending lines changes the size: validated again, the new lines are sent.
    write_input(source, 35)
    third = await ratelane.arun_file(source, output, **options(fake_openai))
    assert third.revalidated and third.ok
    assert (third.skipped, third.succeeded) == (30, 5)


def test_the_sidecar_digests_only_a_racy_input_and_damage_means_validate_again(
    tmp_path: Path,
) -> None:
    import time

    from ratelane._files.input import ValidationReport
    from ratelane._files.validated import RACY_S, Fingerprint, load_report, save_report

    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, 5)
    report = ValidationReport(str(source), 5, (), 0, 42)
    now = time.time_ns()
    # Written just now: a coarse clock could hide a later edit, so every byte is hashed.
    save_report(output, source, report, Fingerprint.of(source), began_ns=now)
    assert orjson.loads(sidecar_path(output).read_bytes())["fingerprint"]["digest"]
    remembered = load_report(output, source)
    assert remembered is not None
    assert (remembered.lines, remembered.estimated_tokens) == (5, 42)
    # Written long before validation began: the stat is proof enough, no digest.
    later = now + int((RACY_S + 60) * 1e9)
    save_report(output, source, report, Fingerprint.of(source), began_ns=later)
    assert orjson.loads(sidecar_path(output).read_bytes())["fingerprint"]["digest"] is None
    assert load_report(output, source) is not None
    assert load_report(output, tmp_path / "other.jsonl") is None  # another INPUT
    for damage in (b"", b"{", b"[]", b'{"version": 2}', b'{"version": 99}'):
        sidecar_path(output).write_bytes(damage)
        assert load_report(output, source) is None, damage


async def test_stop_before_sending_begins_sends_nothing(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, 10)
    file_run = FileRun(source, output, options=FileRunOptions(**options(fake_openai)))
    file_run.stop()  # e.g. Ctrl-C while INPUT is still being validated
    summary = await file_run.run()
    assert summary.reason is ExitReason.STOPPED
    assert (summary.succeeded, summary.not_sent) == (0, 10)
    assert fake_openai.ledger.total == 0
