"""The response cache wired into runs: a second identical run sends nothing.

Against the fake server over real sockets; its ledger records every request
it received, so "nothing sent" is the server's word, not the client's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

import ratelane
from ratelane.testing import FakeOpenAI

MODEL = "gpt-4.1-mini"


def write_input(path: Path, count: int) -> None:
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "custom_id": f"r-{n}",
                    "method": "POST",
                    "url": "/v1/responses",
                    "body": {"model": MODEL, "input": f"say {n}", "temperature": 0},
                }
            )
            + b"\n"
            for n in range(count)
        )
    )


async def test_a_second_run_is_answered_from_the_cache_and_sends_nothing(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    cache = tmp_path / "cache.sqlite"
    prompts = [f"prompt {n}" for n in range(30)]
    options = {
        "model": MODEL,
        "api_key": fake_openai.api_key,
        "base_url": fake_openai.base_url,
        "cache": cache,
    }
    first = await ratelane.arun_many(prompts, **options)
    sent = fake_openai.ledger.total
    assert sent == 30
    assert first.stats.cache_hits == 0
    assert not any(result.cached for result in first)

    second = await ratelane.arun_many(prompts, **options)
    assert fake_openai.ledger.total == sent  # the server saw nothing new
    assert second.stats.cache_hits == 30 and second.stats.succeeded == 30
    assert all(result.cached and result.ok and result.attempts == 0 for result in second)
    assert [r.output_text for r in second] == [r.output_text for r in first]

    # A different request (another model default) is a miss, sent and then cached.
    await ratelane.arun_many(["prompt 0"], **{**options, "model": "gpt-4.1-nano"})
    assert fake_openai.ledger.total == sent + 1


async def test_a_file_run_marks_cached_lines_and_the_summary_counts_them(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, cache = tmp_path / "in.jsonl", tmp_path / "cache.sqlite"
    write_input(source, 20)
    common = {
        "api_key": fake_openai.api_key,
        "base_url": fake_openai.base_url,
        "cache": cache,
        "progress": False,
    }
    await ratelane.arun_file(source, tmp_path / "first.jsonl", **common)
    again = await ratelane.arun_file(source, tmp_path / "second.jsonl", **common)
    assert again.ok and again.stats.cache_hits == 20
    assert fake_openai.ledger.total == 20
    lines = [orjson.loads(raw) for raw in (tmp_path / "second.jsonl").read_bytes().splitlines()]
    assert all(line["ratelane"]["cached"] is True for line in lines)
    assert all(line["response"]["status_code"] == 200 for line in lines)
    first = [orjson.loads(raw) for raw in (tmp_path / "first.jsonl").read_bytes().splitlines()]
    assert not any("cached" in line["ratelane"] for line in first)


async def test_a_corrupt_cache_is_reported_and_ignored(
    tmp_path: Path, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    source, cache = tmp_path / "in.jsonl", tmp_path / "cache.sqlite"
    write_input(source, 5)
    cache.write_bytes(b"this is not an SQLite database, not even close" * 100)
    caplog.set_level(logging.WARNING, logger="ratelane")
    summary = await ratelane.arun_file(
        source,
        tmp_path / "out.jsonl",
        api_key=fake_openai.api_key,
        base_url=fake_openai.base_url,
        cache=cache,
        progress=False,
    )
    assert summary.ok and summary.succeeded == 5
    assert summary.cache_problem is not None and "unusable" in summary.cache_problem
    assert any("response cache" in record.getMessage() for record in caplog.records)
