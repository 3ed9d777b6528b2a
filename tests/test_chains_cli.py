"""Chains through ``ratelane run`` against the fake server, across a SIGKILL and a resume.

Hundreds of 3-turn conversations, shuffled in the file. The fake server
refuses a ``previous_response_id`` it does not hold (404), and echoes the one
it got in each response, so OUTPUT and the server's ledger together show
that every child was sent after its parent answered, with the parent's id.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from _inprocess_cli import InProcessCli
from ratelane.testing import FakeOpenAI, Latency
from test_cli_resume import (
    KEY,
    MODEL,
    Running,
    assert_each_once,
    cli_env,
    command,
    line_count,
    start,
    wait_until,
)

__all__ = ["start"]  # the fixture, imported

CONVERSATIONS = 200
TURNS = 3


def write_chains(
    path: Path, *, seed: int, fail: str | None = None, conversations: int = CONVERSATIONS
) -> list[str]:
    lines: list[dict[str, Any]] = []
    for c in range(conversations):
        for t in range(TURNS):
            custom_id = f"c{c}-t{t}"
            line: dict[str, Any] = {
                "custom_id": custom_id,
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": MODEL, "input": f"turn {t} of {c}",
                         "metadata": {"custom_id": custom_id}},
            }  # fmt: skip
            if t:
                line["previous_custom_id"] = f"c{c}-t{t - 1}"
            if custom_id == fail:
                line["body"]["max_output_tokens"] = 1  # the fake server refuses below 16
            lines.append(line)
    random.Random(seed).shuffle(lines)
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return [line["custom_id"] for line in lines]


def parent_of(custom_id: str) -> str | None:
    conversation, turn = custom_id.rsplit("-t", 1)
    return f"{conversation}-t{int(turn) - 1}" if int(turn) else None


def test_chains_across_a_sigkill_and_resume(
    tmp_path: Path, start: Callable[..., Running], in_process_cli: InProcessCli
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_chains(source, seed=11)
    fake = FakeOpenAI(api_key=KEY, latency=Latency(0.01, sigma=0.5), seed=3)
    with fake.run_in_thread() as server:
        env = cli_env(server)
        argv = command("run", source, "-o", output, "--no-progress", "--max-concurrency", "16")
        running = start(argv, env)
        wait_until(lambda: line_count(output) >= 150, "a quarter of the lines", process=running)
        running.kill()
        assert line_count(output) < len(ids)
        ran = in_process_cli(*argv[3:], env=env)
        assert ran.returncode == 0, ran.stderr
        assert_each_once(output, ids)
        bodies = {
            line["custom_id"]: line["response"]["body"]
            for line in map(orjson.loads, output.read_bytes().splitlines())
        }
        # The server's own echo: each child continued its parent's very response.
        for custom_id, body in bodies.items():
            parent = parent_of(custom_id)
            expected = None if parent is None else bodies[parent]["id"]
            assert body["previous_response_id"] == expected, custom_id
        # The ledger: no child was ever refused for an unknown parent, and the successful
        # send of each child came after the successful send of its parent.
        entries = server.ledger.entries
        assert all(entry.status == 200 for entry in entries), server.ledger.summary()
        last_sent = {entry.custom_id: entry.time_s for entry in entries}
        first_sent: dict[str | None, float] = {}
        for entry in entries:
            first_sent.setdefault(entry.custom_id, entry.time_s)
        for custom_id in ids:
            parent = parent_of(custom_id)
            if parent is not None:
                assert first_sent[custom_id] >= first_sent[parent]
                assert last_sent[custom_id] >= last_sent[parent] or (
                    # a parent sent again after the kill: its child was done before it
                    custom_id in bodies and bodies[custom_id]["previous_response_id"]
                )


def test_a_failed_parent_fails_the_rest_of_its_conversation(
    tmp_path: Path, in_process_cli: InProcessCli
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_chains(source, seed=5, fail="c7-t0", conversations=30)
    fake = FakeOpenAI(api_key=KEY, latency=Latency(0.0))
    with fake.run_in_thread() as server:
        ran = in_process_cli("run", str(source), "-o", str(output), "--no-progress",
                             env=cli_env(server))  # fmt: skip
        assert ran.returncode == 1, ran.stderr
        done = [orjson.loads(raw)["custom_id"] for raw in output.read_bytes().splitlines()]
        assert sorted(done) == sorted(set(ids) - {"c7-t0", "c7-t1", "c7-t2"})
        errors = {
            line["custom_id"]: line["error"]
            for line in map(orjson.loads, (tmp_path / "out.errors.jsonl").read_bytes().splitlines())
        }
        assert sorted(errors) == ["c7-t0", "c7-t1", "c7-t2"]
        assert (
            errors["c7-t1"]["code"] == "parent_failed" and '"c7-t0"' in errors["c7-t1"]["message"]
        )
        assert (
            errors["c7-t2"]["code"] == "parent_failed" and '"c7-t1"' in errors["c7-t2"]["message"]
        )
        sent = {entry.custom_id for entry in server.ledger.entries}
        assert "c7-t1" not in sent and "c7-t2" not in sent
