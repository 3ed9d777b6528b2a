"""``ratelane run`` and ``ratelane demo`` driven through ``main(argv)`` against the fake server.

Clean runs, every validation error class, usage errors, exit code 1, the
dry run, the progress bar on a terminal (a real ``python -m ratelane``
subprocess on a pty), and the demo. Crash, signal, lock and resume scenarios
live in ``test_cli_resume.py``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from _inprocess_cli import InProcessCli
from ratelane._cli import demo as demo_command
from ratelane._cli.summary import LatencySample, compact_number, progress_postfix
from ratelane.testing import ECHO_PREFIX, FakeOpenAI

TIMEOUT_S = 60
MODEL = "gpt-4.1-mini"


# --------------------------------------------------------------------------- helpers


def batch_line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    """A Responses request that tags itself so the fake's ledger knows its custom_id."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": MODEL, "input": prompt, "metadata": {"custom_id": custom_id}, **body},
    }


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path``, asserting each is complete and parses."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path.name} ends with a torn line"
    return [orjson.loads(raw) for raw in data.splitlines()]


def cli_env(server: FakeOpenAI | None, *, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    if server is not None:
        env["OPENAI_BASE_URL"] = server.base_url
        env["OPENAI_API_KEY"] = server.api_key if key is None else key
    elif key is not None:
        env["OPENAI_API_KEY"] = key
    return env


@pytest.fixture
def ratelane(in_process_cli: InProcessCli) -> InProcessCli:
    """``ratelane ARGS`` in this process; the pty test below starts the real entry point."""
    return in_process_cli


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-test-run-0001").run_in_thread() as fake:
        yield fake


def assert_batch_success(line: dict[str, Any]) -> None:
    assert set(line) >= {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    response = line["response"]
    assert response["status_code"] == 200
    assert response["request_id"].startswith("req_")
    assert isinstance(response["body"], dict)


def output_text(body: dict[str, Any]) -> str:
    if "choices" in body:
        return str(body["choices"][0]["message"]["content"])
    return "".join(
        part["text"]
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


# --------------------------------------------------------------------------- clean runs


def test_clean_run_writes_every_result_once_in_batch_shape(
    server: FakeOpenAI, tmp_path: Path, ratelane: InProcessCli
) -> None:
    lines = [batch_line(f"q-{n}", f"question number {n}") for n in range(240)]
    for n in range(0, 240, 8):  # some lines leave the model to --model
        del lines[n]["body"]["model"]
    chat = {
        "custom_id": "chat-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "chat hello"}],
                 "metadata": {"custom_id": "chat-1"}},
    }  # fmt: skip
    lines.append(chat)
    prompts = {"chat-1": "chat hello"} | {f"q-{n}": f"question number {n}" for n in range(240)}
    source = tmp_path / "in.jsonl"
    write_lines(source, lines)
    output = tmp_path / "out.jsonl"

    done = ratelane(
        "run", source, "-o", output, "--model", "gpt-4o-mini", "--max-concurrency", "16",
        env=cli_env(server),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    results = read_jsonl(output)
    assert sorted(line["custom_id"] for line in results) == sorted(prompts)
    for line in results:
        assert_batch_success(line)
        expected = ECHO_PREFIX + prompts[line["custom_id"]]
        assert output_text(line["response"]["body"]) == expected
    assert (tmp_path / "out.errors.jsonl").read_bytes() == b""
    assert server.ledger.total == 241
    models = {entry.custom_id: entry.model for entry in server.ledger.entries}
    assert models["q-0"] == "gpt-4o-mini" and models["q-1"] == MODEL
    assert "241 ok, 0 failed" in done.stderr
    assert "done: every line succeeded" in done.stderr
    assert "latency" in done.stderr and "p99" in done.stderr
    assert str(output) in done.stderr
    assert server.api_key not in done.stderr + done.stdout

    again = ratelane("run", source, "-o", output, "--model", "x", env=cli_env(server))
    assert again.returncode == 0, again.stderr
    assert server.ledger.total == 241  # everything was already done
    assert "nothing to do" in again.stderr
    assert "241 skipped" in again.stderr
    assert len(read_jsonl(output)) == 241


def test_help_documents_exit_codes_lock_and_errors_file(ratelane: InProcessCli) -> None:
    shown = ratelane("run", "--help", env=cli_env(None))
    assert shown.returncode == 0
    text = shown.stdout
    for needle in ("130", "OUTPUT.lock", "exits 2", "OPENAI_API_KEY", "errors.jsonl", "10 s"):
        assert needle in text, needle


def test_the_real_entry_point_exits_with_the_code_main_returns(tmp_path: Path) -> None:
    # The other tests here call main(argv); this one goes through ``python -m ratelane``.
    checked = subprocess.run(
        [sys.executable, "-m", "ratelane", "run", str(tmp_path / "missing.jsonl"),
         "-o", str(tmp_path / "out.jsonl")],
        env=cli_env(None, key="sk-x"), capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert checked.returncode == 2, checked.stderr
    assert "does not exist" in checked.stderr


# --------------------------------------------------------------------------- validation


def test_every_validation_problem_is_named_by_line_and_nothing_is_sent(
    server: FakeOpenAI, tmp_path: Path, ratelane: InProcessCli
) -> None:
    good = orjson.dumps(batch_line("ok-1", "fine"))
    raw_lines = [
        good,  # 1
        b'{"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": {',  # 2 JSON
        b"[1, 2, 3]",  # 3 not an object
        orjson.dumps({"method": "POST", "url": "/v1/responses", "body": {}}),  # 4 no custom_id
        orjson.dumps({"custom_id": 7, "method": "POST", "url": "/v1/responses", "body": {}}),
        orjson.dumps(batch_line("ok-1", "again")),  # 6 duplicate of line 1
        orjson.dumps({**batch_line("m", "x"), "method": "GET"}),  # 7 method
        orjson.dumps({**batch_line("u", "x"), "url": "/v1/images"}),  # 8 url
        orjson.dumps({**batch_line("b", "x"), "body": "text"}),  # 9 body not an object
        b'{"custom_id": "bad-\xff", "method": "POST"}',  # 10 invalid UTF-8
        b"",  # 11 blank: ignored
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(raw_lines) + b"\n")
    output = tmp_path / "out.jsonl"

    for extra in ((), ("--dry-run",)):
        checked = ratelane("run", source, "-o", output, *extra, env=cli_env(server))
        assert checked.returncode == 2, checked.stderr
        text = checked.stderr
        for number, needle in [
            (2, "malformed JSON"),
            (3, "not an object"),
            (4, 'missing "custom_id"'),
            (5, '"custom_id" must be a string'),
            (6, "duplicate custom_id"),
            (7, '"method"'),
            (8, '"url"'),
            (9, '"body" must be a JSON object'),
            (10, "invalid UTF-8"),
        ]:
            assert any(f"line {number}:" in row and needle in row for row in text.splitlines()), (
                f"line {number} ({needle}) not reported:\n{text}"
            )
        assert "line 1:" not in text and "line 11:" not in text
    assert server.ledger.total == 0
    assert not output.exists()


def test_many_problems_show_the_first_few_then_a_count(
    server: FakeOpenAI, tmp_path: Path, ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("not json\n" * 25)
    checked = ratelane("run", source, "-o", tmp_path / "out.jsonl", env=cli_env(server))
    assert checked.returncode == 2
    assert "line 10:" in checked.stderr and "line 11:" not in checked.stderr
    assert "and 15 more problems" in checked.stderr
    assert server.ledger.total == 0


@pytest.mark.parametrize(
    ("args", "env_key", "needle"),
    [
        (("run", "{in}", "-o", "{out}"), None, "OPENAI_API_KEY"),
        (("run", "{dir}/missing.jsonl", "-o", "{out}"), "sk-x", "does not exist"),
        (("run", "{in}", "-o", "{in}"), "sk-x", "INPUT and OUTPUT are the same file"),
        (("run", "{in}", "-o", "{out}", "--errors", "{in}"), "sk-x", "INPUT and ERRORS"),
        (("run", "{in}", "-o", "{dir}/nowhere/out.jsonl"), "sk-x", "does not exist"),
        (("run", "{in}", "-o", "{out}", "--rpm", "0"), "sk-x", "--rpm"),
        (("run", "{in}", "-o", "{out}", "--max-concurrency", "x"), "sk-x", "--max-concurrency"),
        (("run", "{in}", "-o", "{out}", "--base-url", "api.example"), "sk-x", "http://"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(
    server: FakeOpenAI,
    tmp_path: Path,
    args: tuple[str, ...],
    env_key: str | None,
    needle: str,
    ratelane: InProcessCli,
) -> None:
    source = tmp_path / "in.jsonl"
    write_lines(source, [batch_line("a", "hello")])
    before = source.read_bytes()
    names = {"in": str(source), "out": str(tmp_path / "out.jsonl"), "dir": str(tmp_path)}
    env = cli_env(server)
    env.pop("OPENAI_API_KEY")
    if env_key is not None:
        env["OPENAI_API_KEY"] = env_key
    checked = ratelane(*(arg.format(**names) for arg in args), env=env)
    assert checked.returncode == 2, checked.stderr
    assert needle in checked.stderr
    assert server.ledger.total == 0
    assert source.read_bytes() == before
    if env_key is not None:
        assert env_key not in checked.stderr


def test_dry_run_counts_and_sends_nothing_without_a_key(
    server: FakeOpenAI, tmp_path: Path, ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    write_lines(source, [batch_line(f"d-{n}", "word " * 40) for n in range(30)])
    output = tmp_path / "out.jsonl"
    env = cli_env(server)
    env.pop("OPENAI_API_KEY")

    checked = ratelane("run", source, "-o", output, "--dry-run", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "30 requests" in checked.stdout
    assert "tokens" in checked.stdout
    assert "30 would be sent" in checked.stdout
    assert "nothing was sent" in checked.stdout
    assert not output.exists()
    assert server.ledger.total == 0

    # With part of the work done, the dry run says what a resume would send.
    done = [orjson.loads(orjson.dumps({"id": "batch_req_1", "custom_id": f"d-{n}", "error": None,
             "response": {"status_code": 200, "request_id": "req_1", "body": {}}}))
            for n in range(12)]  # fmt: skip
    write_lines(output, done)
    checked = ratelane("run", source, "-o", output, "--dry-run", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "12 of 30 lines already have a success; 18 would be sent" in checked.stdout
    assert server.ledger.total == 0


# --------------------------------------------------------------------------- failures


def test_permanent_failures_exit_1_go_to_errors_and_are_resent_on_resume(
    tmp_path: Path, ratelane: InProcessCli
) -> None:
    lines = [batch_line(f"f-{n}", f"prompt {n}") for n in range(60)]
    lines[5]["body"]["model"] = "gpt-nonexistent"  # 404 model_not_found
    lines[17]["body"]["max_output_tokens"] = 5  # 400 integer_below_min_value
    lines[40]["body"]["model"] = "gpt-nonexistent"
    failing = {
        "f-5": "model_not_found",
        "f-17": "integer_below_min_value",
        "f-40": "model_not_found",
    }
    source = tmp_path / "in.jsonl"
    write_lines(source, lines)
    output = tmp_path / "out.jsonl"
    errors = tmp_path / "failed.jsonl"
    with FakeOpenAI(models={MODEL}).run_in_thread() as server:
        first = ratelane("run", source, "-o", output, "--errors", errors, env=cli_env(server))
        assert first.returncode == 1, first.stderr
        assert "57 ok, 3 failed" in first.stderr
        assert str(errors) in first.stderr
        assert "HINT" in first.stderr and f"--errors {errors}" in first.stderr
        successes = read_jsonl(output)
        assert sorted(line["custom_id"] for line in successes) == sorted(
            line["custom_id"] for line in lines if line["custom_id"] not in failing
        )
        failures = read_jsonl(errors)
        assert {line["custom_id"]: line["error"]["code"] for line in failures} == failing
        for line in failures:
            assert line["response"]["status_code"] in (400, 404)
            assert line["error"]["message"]
        sent_before = server.ledger.total

        second = ratelane("run", source, "-o", output, "--errors", errors, env=cli_env(server))
        assert second.returncode == 1, second.stderr
        # Only the earlier failures were sent again; ERRORS describes this run alone.
        resent = [entry.custom_id for entry in server.ledger.entries[sent_before:]]
        assert sorted(resent) == sorted(failing)
        assert sorted(line["custom_id"] for line in read_jsonl(errors)) == sorted(failing)
        assert len(read_jsonl(output)) == 57


# --------------------------------------------------------------------------- terminal


def test_progress_bar_is_drawn_when_stderr_is_a_terminal(
    server: FakeOpenAI, tmp_path: Path, ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    write_lines(source, [batch_line(f"p-{n}", f"hi {n}") for n in range(40)])
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO once the child side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratelane", "run", str(source), "-o", str(tmp_path / "o.jsonl")],
            env=cli_env(server),
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        assert process.wait(TIMEOUT_S) == 0
        reader.join(TIMEOUT_S)
    finally:
        os.close(primary)
    text = b"".join(chunks).decode(errors="replace")
    assert "40/40" in text
    assert "req/s" in text
    assert "ok=" in text and "failed=0" in text

    quiet = ratelane(
        "run", source, "-o", tmp_path / "o2.jsonl", "--no-progress", env=cli_env(server)
    )
    assert quiet.returncode == 0
    assert "req/s" not in quiet.stderr


# --------------------------------------------------------------------------- demo


def test_demo_runs_offline_and_shows_results(
    tmp_path: Path, ratelane: InProcessCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo's fake server without its show-off latency (0.2 s median a request).
    monkeypatch.setattr(demo_command, "DEMO_LATENCY_S", 0.0)
    directory = tmp_path / "demo"
    env = cli_env(None)
    shown = ratelane("demo", "--dir", directory, "--count", "50", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "done: every line succeeded" in shown.stderr
    assert "50 ok, 0 failed" in shown.stderr
    assert "demo-00001 -> Echo: " in shown.stdout
    assert f"ratelane run {directory / 'input.jsonl'}" in shown.stdout
    results = read_jsonl(directory / "output.jsonl")
    assert len(results) == 50
    for line in results:
        assert_batch_success(line)

    again = ratelane("demo", "--dir", directory, "--count", "20", "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    assert len(read_jsonl(directory / "output.jsonl")) == 20  # a demo always starts over


# --------------------------------------------------------------------------- formatting


def test_latency_sample_keeps_a_bounded_uniform_sample() -> None:
    sample = LatencySample(1000, seed=1)
    for value in range(100_000):
        sample.append(float(value))
    assert len(sample) == 1000
    assert sample.seen == 100_000
    ordered = sorted(sample)
    assert 45_000 < ordered[500] < 55_000  # the median of 0..99999, roughly


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "?"), (0, "0"), (950, "950"), (6000, "6k"), (12_500, "12.5k"), (2_000_000, "2M")],
)
def test_compact_number(value: float | None, text: str) -> None:
    assert compact_number(value) == text


def test_progress_postfix() -> None:
    text = progress_postfix(
        succeeded=1200, failed=3, requests_per_minute=5910.0, tokens_per_minute=None,
        cooldowns=2, cooling_down=True,
    )  # fmt: skip
    assert text == "ok=1,200 failed=3 rpm=5.91k tpm=∞ cooldowns=2 (cooling down)"
