"""Chains: the scheduler on virtual time, and INPUT's chain validation through ``ratelane run``.

The scheduler runs hundreds of 3-turn conversations, shuffled, through a
MockTransport that names every response after its request and records when
each was sent, so "each child after its parent, with the parent's id" is
checked exactly, in milliseconds.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from _inprocess_cli import InProcessCli
from _virtual_time import Answer, MockTransport, run
from ratelane import RetryPolicy
from ratelane._core.models import Request, Result
from ratelane._engine.chains import PARENT_FAILED, ChainScheduler
from ratelane._engine.engine import Engine
from ratelane._limits.governor import RateGovernor

MODEL = "gpt-4.1-mini"


def _conversations(count: int, turns: int, seed: int) -> list[tuple[str, str | None]]:
    """``(custom_id, parent)`` of every turn, shuffled."""
    lines = [
        (f"c{c}-t{t}", f"c{c}-t{t - 1}" if t else None) for c in range(count) for t in range(turns)
    ]
    random.Random(seed).shuffle(lines)
    return lines


def _answer_named(failing: frozenset[str] = frozenset()) -> MockTransport:
    def script(path: str, body: dict[str, Any], number: int) -> Answer | None:
        custom_id = body["metadata"]["custom_id"]
        if custom_id in failing:
            error = {"message": "Invalid input", "type": "invalid_request_error", "code": "bad"}
            return Answer(400, {"error": error})
        response = {"id": f"resp_{custom_id}", "object": "response", "status": "completed",
                    "model": MODEL, "output": [], "usage": None}  # fmt: skip
        return Answer(200, response, latency_s=random.Random(number).uniform(0.05, 2.0))

    return MockTransport(script)


async def _run_chains(
    lines: list[tuple[str, str | None]], transport: MockTransport, *, concurrency: int = 32
) -> tuple[list[Result], ChainScheduler]:
    engine = Engine(
        transport,  # type: ignore[arg-type]
        RateGovernor(),
        RetryPolicy(max_attempts=1),
        rng=random.Random(0),
    )
    run_ = engine.new_run(max_concurrency=concurrency)
    parent_of = {custom_id: parent for custom_id, parent in lines if parent is not None}
    scheduler = ChainScheduler(parent_of, stats=run_.stats, stopping=lambda: run_.stopping)
    results: list[Result] = []

    async def sink(result: Result) -> None:
        results.append(result)

    requests = iter(
        [
            (i, Request({"model": MODEL, "input": "x", "metadata": {"custom_id": cid}}, cid))
            for i, (cid, _) in enumerate(lines)
        ]
    )
    await run_.drive(scheduler.requests(requests), scheduler.sink(sink))
    return results, scheduler


def test_three_turns_over_hundreds_of_shuffled_conversations() -> None:
    lines = _conversations(300, 3, seed=7)

    async def scenario() -> None:
        transport = _answer_named()
        results, scheduler = await _run_chains(lines, transport)
        assert len(results) == 900 and all(result.ok for result in results)
        sent = {call.body["metadata"]["custom_id"]: call for call in transport.calls}
        assert len(transport.calls) == 900  # each sent once
        answered = {result.custom_id: sent[result.custom_id].time_s + result.latency_s
                    for result in results}  # fmt: skip
        for custom_id, parent in lines:
            call = sent[custom_id]
            if parent is None:
                assert "previous_response_id" not in call.body
                continue
            assert call.body["previous_response_id"] == f"resp_{parent}"
            assert call.time_s >= answered[parent] - 1e-6  # after the parent's answer
        assert scheduler.released > 0  # some children waited for their parent
        # Never a worker held by a waiting child: the 32 workers stay busy, so the run
        # takes about the sum of latencies over 32 (plus the tail of the last chains).
        busy_s = sum(result.latency_s for result in results)
        makespan = max(answered.values())
        assert makespan <= busy_s / 32 * 1.1 + 3 * 2.0, (makespan, busy_s / 32)

    run(scenario())


def test_a_failed_parent_fails_its_descendants_unsent() -> None:
    lines = [("a0", None), ("a1", "a0"), ("a2", "a1"), ("b0", None), ("b1", "b0"), ("a3", "a2")]

    async def scenario() -> None:
        transport = _answer_named(failing=frozenset({"a0"}))
        results, scheduler = await _run_chains(lines, transport)
        by_id = {result.custom_id: result for result in results}
        assert sorted(by_id) == ["a0", "a1", "a2", "a3", "b0", "b1"]
        assert by_id["b1"].ok and not by_id["a0"].ok
        sent = [call.body["metadata"]["custom_id"] for call in transport.calls]
        assert sorted(sent) == ["a0", "b0", "b1"]  # the descendants of a0 never sent
        for child, parent in (("a1", "a0"), ("a2", "a1"), ("a3", "a2")):
            error = by_id[child].error
            assert error is not None and error.code == PARENT_FAILED
            assert f'"{parent}"' in error.message and "HINT" in error.message
        assert scheduler.failed_unsent == 3

    run(scenario())


def test_stopping_wakes_a_worker_waiting_for_a_parent() -> None:
    lines = [("p", None), ("c", "p")]

    async def scenario() -> None:
        def slow(path: str, body: dict[str, Any], number: int) -> Answer | None:
            return Answer(200, {"id": "resp_p", "status": "completed", "output": []},
                          latency_s=100.0)  # fmt: skip

        engine = Engine(MockTransport(slow), RateGovernor(), RetryPolicy(), rng=random.Random(0))  # type: ignore[arg-type]
        run_ = engine.new_run(max_concurrency=4)
        stopped = False
        scheduler = ChainScheduler({"c": "p"}, stats=run_.stats, stopping=lambda: stopped)
        results: list[Result] = []

        async def sink(result: Result) -> None:
            results.append(result)

        async def stop_soon() -> None:
            nonlocal stopped
            await asyncio.sleep(1.0)
            stopped = True
            run_.stop()
            scheduler.wake()

        requests = iter([(i, Request({"model": MODEL, "input": "x"}, cid))
                         for i, (cid, _) in enumerate(lines)])  # fmt: skip
        await asyncio.gather(
            run_.drive(scheduler.requests(requests), scheduler.sink(sink)), stop_soon()
        )
        assert [result.custom_id for result in results] == ["p"]  # c stays unsent
        assert scheduler.waiting == 0 or scheduler.waiting == 1

    run(scenario())


# -- validation through the CLI ---------------------------------------------------------


def _line(custom_id: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": "/v1/responses",
                            "body": {"model": MODEL, "input": "hi"}}  # fmt: skip
    if parent is not None:
        line["previous_custom_id"] = parent
    body = extra.pop("body", None)
    if body:
        line["body"].update(body)
    line.update(extra)
    return line


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([_line("a"), _line("b", "zz")], ['line 2: "previous_custom_id" "zz" names no line']),
        (
            [_line("a", "c"), _line("x"), _line("b", "a"), _line("c", "b")],
            ['line 1: lines 1, 3, 4 form a cycle of parents ("a" -> "c" -> "b" -> "a")'],
        ),
        (
            [_line("a", body={"store": False}), _line("b", "a")],
            ['line 2: its parent "a" (line 1) has "store": false'],
        ),
        (
            [_line("a", url="/v1/chat/completions", body={"messages": []}), _line("b", "a")],
            ['line 2: its parent "a" (line 1) is a /v1/chat/completions request'],
        ),
        (
            [_line("a"), _line("b", "a", body={"previous_response_id": "resp_x"})],
            ['line 2: the body sets "previous_response_id"'],
        ),
        ([_line("a"), _line("b", "b")], ['"previous_custom_id" names the line itself']),
        ([_line("a"), {**_line("b"), "previous_custom_id": 3}], ['"previous_custom_id" must be']),
    ],
    ids=["unknown-parent", "cycle", "store-false", "other-endpoint", "both-ids", "self", "type"],
)
def test_chain_problems_exit_2_with_line_numbers_and_send_nothing(
    tmp_path: Path,
    in_process_cli: InProcessCli,
    lines: list[dict[str, Any]],
    expected: list[str],
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    env = {"OPENAI_API_KEY": "sk-test-chains-0001", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    for argv in (["--dry-run"], []):
        ran = in_process_cli("run", str(source), "-o", str(tmp_path / "out.jsonl"), *argv, env=env)
        assert ran.returncode == 2, ran.stderr
        for text in expected:
            assert text in ran.stderr
        assert "HINT" in ran.stderr or "line itself" in ran.stderr or "must be" in ran.stderr
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_bytes() == b""


def test_batch_mode_and_shards_refuse_what_they_cannot_do_before_sending(
    tmp_path: Path, in_process_cli: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"".join(orjson.dumps(line) + b"\n" for line in [_line("a"), _line("b", "a")])
    )
    env = {"OPENAI_API_KEY": "sk-test-chains-0001", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    output = tmp_path / "out.jsonl"
    ran = in_process_cli("run", str(source), "-o", str(output), "--via", "batch", env=env)
    assert ran.returncode == 2, ran.stderr
    assert "INPUT has 1 chained line(s)" in ran.stderr and "--via realtime" in ran.stderr
    ran = in_process_cli(
        "run", str(source), "-o", str(output), "--via", "batch", "--background", env=env
    )
    assert ran.returncode == 2, ran.stderr
    assert "background mode is for real-time runs" in ran.stderr
    ran = in_process_cli("run", str(source), "-o", str(output), "--shard", "0/2", env=env)
    assert ran.returncode == 2, ran.stderr
    assert "a turn and its" in ran.stderr and "without --shard" in ran.stderr
    ran = in_process_cli(
        "run", str(source), "-o", str(output), "--via", "batch", "--shard", "0/2", env=env
    )
    assert ran.returncode == 2, ran.stderr
    assert "a Batch API run needs no sharding" in ran.stderr
    assert not output.exists() or output.read_bytes() == b""


def test_parked_children_are_held_not_in_flight() -> None:
    lines = [("p", None), ("c1", "p"), ("c2", "p"), ("q", None)]

    async def scenario() -> None:
        def slow(path: str, body: dict[str, Any], number: int) -> Answer | None:
            return Answer(200, {"id": f"resp_{number}", "status": "completed", "output": []},
                          latency_s=10.0)  # fmt: skip

        engine = Engine(MockTransport(slow), RateGovernor(), RetryPolicy(), rng=random.Random(0))  # type: ignore[arg-type]
        run_ = engine.new_run(max_concurrency=8)
        scheduler = ChainScheduler({"c1": "p", "c2": "p"}, stats=run_.stats, stopping=lambda: False)
        seen: list[tuple[int, int]] = []

        async def sink(result: Result) -> None:
            pass

        async def look() -> None:
            await asyncio.sleep(1.0)  # p and q sent, c1 and c2 parked behind p
            seen.append((scheduler.held, run_.in_flight))

        requests = iter([(i, Request({"model": MODEL, "input": "x"}, cid))
                         for i, (cid, _) in enumerate(lines)])  # fmt: skip
        await asyncio.gather(run_.drive(scheduler.requests(requests), scheduler.sink(sink)), look())
        assert seen == [(2, 2)]  # 4 lines read: 2 held by the scheduler, 2 on the wire
        assert scheduler.held == 0 and scheduler.released == 2

    run(scenario())


@pytest.mark.parametrize("chunk", [7, 19, 20, 21, 64])
def test_the_chain_marker_is_found_across_every_chunk_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    from ratelane._files import chains

    monkeypatch.setattr(chains, "SCAN_CHUNK", chunk)
    path = tmp_path / "in.jsonl"
    for offset in range(3 * chunk):
        path.write_bytes(b"x" * offset + chains.MARKER + b"y" * 5)
        assert chains.has_chains(path), (chunk, offset)
        path.write_bytes(b"x" * offset + chains.MARKER[:-1] + b"y" * 5)
        assert not chains.has_chains(path), (chunk, offset)
    path.write_bytes(b"")
    assert not chains.has_chains(path)
