"""``ratelane run`` with issue 14's flags, in-process against the fake server."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import orjson
import pytest

from _inprocess_cli import InProcessCli
from ratelane._cli.operating import failure_advice, prompt_cache_hint, raised_cap
from ratelane._core.models import RunStats
from ratelane.testing import FakeOpenAI

MODEL = "gpt-4.1-mini"


def write_input(path: Path, count: int) -> None:
    body = {"model": MODEL, "input": "x" * 40, "max_output_tokens": 20}
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {"custom_id": f"r-{n}", "method": "POST", "url": "/v1/responses", "body": body}
            )
            + b"\n"
            for n in range(count)
        )
    )


def cli_env(server: FakeOpenAI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=server.api_key)
    return env


def test_max_cost_exits_3_and_prints_the_command_with_a_higher_cap(
    tmp_path: Path, in_process_cli: InProcessCli
) -> None:
    source, output, prices = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "p.json"
    write_input(source, 30)
    prices.write_text(f'{{"{MODEL}": {{"input": 1000, "output": 1000}}}}')
    argv = ["run", source, "-o", output, "--prices", prices, "--max-cost", "0.2"]
    with FakeOpenAI().run_in_thread() as server:
        stopped = in_process_cli(*argv, "--max-concurrency", "2", env=cli_env(server))
        assert stopped.returncode == 3, stopped.stderr
        assert "stopped at the spend cap" in stopped.stderr
        assert "of the $0.2000 cap spent" in stopped.stderr
        command = stopped.stderr.split("e.g.:\n", 1)[1].strip().splitlines()[0]
        resumed = in_process_cli(*shlex.split(command)[3:], env=cli_env(server))
    assert "--max-cost 0.4" not in command  # enough for the lines left, not just twice
    assert resumed.returncode == 0, resumed.stderr
    assert len(output.read_bytes().splitlines()) == 30


def test_dry_run_prints_the_projected_cost_range(
    tmp_path: Path, fake_openai: FakeOpenAI, in_process_cli: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source, 10)
    shown = in_process_cli(
        "run", source, "-o", tmp_path / "out.jsonl", "--dry-run", env=cli_env(fake_openai)
    )
    assert shown.returncode == 0, shown.stderr
    # 10 lines of 10 input tokens at $0.40/1M, plus 20 output tokens each at $1.60/1M.
    assert "projected cost: $0.0000 to $0.0004 for 10 lines" in shown.stdout
    assert fake_openai.ledger.total == 0


@pytest.mark.parametrize(
    ("cap", "spent", "done", "remaining", "suggested"),
    [
        (0.2, 0.19, 10, 10, 0.46),  # 1.2 * (0.19 + 10 * 0.019) = 0.456
        (5.0, 4.99, 999, 1, 7.5),  # nearly done: half again the old cap
        (1.0, 0.0, 0, 5, 2.0),  # nothing done yet: no average, twice the cap
        (0.0123, 0.012, 3, 297, 1.5),  # 1.2 * (0.012 + 297 * 0.004) = 1.44
    ],
)
def test_the_suggested_cap_covers_the_lines_left_and_is_round(
    cap: float, spent: float, done: int, remaining: int, suggested: float
) -> None:
    assert raised_cap(cap, spent, done=done, remaining=remaining) == suggested


@pytest.mark.parametrize(
    ("failed", "transient", "headline", "hint"),
    [
        (3, 0, "3 lines failed permanently", "fix those lines in INPUT"),
        (1, 1, "1 line failed on transient errors", "nothing is wrong with those lines"),
        (5, 2, "2 on transient errors", "fix the rejected lines in INPUT"),
    ],
)
def test_failure_advice_tells_transient_from_rejected(
    failed: int, transient: int, headline: str, hint: str
) -> None:
    said, advised = failure_advice(failed, transient)
    assert headline in said and hint in advised


@pytest.mark.parametrize(
    ("input_tokens", "cached", "requests", "share", "hinted"),
    [
        (0, 0, 0, None, False),
        (10_000, 0, 100, "0%", False),  # short prompts: caching cannot apply
        (300_000, 10_000, 100, "3%", True),  # long, barely cached: set prompt_cache_key
        (300_000, 240_000, 100, "80%", False),
    ],
)
def test_prompt_cache_share_and_hint(
    input_tokens: int, cached: int, requests: int, share: str | None, hinted: bool
) -> None:
    stats = RunStats(succeeded=requests, input_tokens=input_tokens, cached_tokens=cached)
    text = prompt_cache_hint(stats)
    if share is None:
        assert text is None
        return
    assert text is not None and text.startswith(share)
    assert ("prompt_cache_key" in text) is hinted
