"""Crashes, signals, the lock and fatal errors, each followed by a resume, via the real CLI.

Every scenario ends with the same invariant: each custom_id has exactly one
line in OUTPUT, every line parses, and nothing is torn.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from _inprocess_cli import InProcessCli, Ran
from ratelane.testing import FakeOpenAI, Faults, Latency

TIMEOUT_S = 60
MODEL = "gpt-4.1-mini"
KEY = "sk-test-resume-0001"


# --------------------------------------------------------------------------- helpers


def write_input(path: Path, count: int, *, prefix: str = "r") -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "custom_id": custom_id,
                    "method": "POST",
                    "url": "/v1/responses",
                    "body": {
                        "model": MODEL,
                        "input": f"prompt for {custom_id}",
                        "metadata": {"custom_id": custom_id},
                    },
                }
            )
            + b"\n"
            for custom_id in ids
        )
    )
    return ids


def cli_env(server: FakeOpenAI, *, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_BASE_URL"] = server.base_url
    env["OPENAI_API_KEY"] = server.api_key if key is None else key
    return env


@pytest.fixture
def ratelane(in_process_cli: InProcessCli) -> InProcessCli:
    """A run needing no process boundary (a resume, the second run against a held lock)."""
    return in_process_cli


def run_resume(ratelane: InProcessCli, resume: list[str], env: dict[str, str]) -> Ran:
    """Run a printed resume command (``python -m ratelane ARGS``) through ``main(ARGS)``."""
    assert resume[:3] == [sys.executable, "-m", "ratelane"], resume
    return ratelane(*resume[3:], env=env)


def command(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "ratelane", *map(os.fspath, args)]


@dataclass
class Running:
    """A CLI process whose stdout/stderr go to files (no pipe can fill up and block it)."""

    process: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT_S)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def launch(argv: list[str], env: dict[str, str]) -> Running:
        number = len(started)
        stderr_path = tmp_path / f"stderr-{number}.txt"
        with (tmp_path / f"stdout-{number}.txt").open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        running = Running(process, stderr_path)
        started.append(running)
        return running

    yield launch
    for running in started:
        running.kill()


def wait_until(predicate: Callable[[], bool], what: str, *, process: Running | None = None) -> None:
    """Wait for a condition on files or the server, bounded; fail early if the CLI exits."""
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if process is not None and process.process.poll() is not None:
            raise AssertionError(
                f"the CLI exited ({process.process.returncode}) before {what}:\n{process.stderr}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def has_lines(path: Path, count: int) -> Callable[[], bool]:
    return lambda: line_count(path) >= count


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of OUTPUT (a torn last line is allowed and ignored), all parsed."""
    data = path.read_bytes() if path.exists() else b""
    body, _, _torn = data.rpartition(b"\n")
    return [orjson.loads(raw) for raw in body.splitlines()] if body else []


def assert_each_once(path: Path, ids: list[str]) -> None:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "OUTPUT ends with a torn line"
    lines = [orjson.loads(raw) for raw in data.splitlines()]
    seen = [line["custom_id"] for line in lines]
    assert len(seen) == len(set(seen)), "a custom_id appears twice"
    assert sorted(seen) == sorted(ids)
    for line in lines:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200


def resume_command_in(stderr: str) -> list[str]:
    """The printed resume command, runnable here (``python`` -> this interpreter)."""
    for row in stderr.splitlines():
        words = row.strip().split(" ")
        if words[:4] == ["python", "-m", "ratelane", "run"]:
            parts = shlex.split(row.strip())
            return [sys.executable, *parts[1:]]
    raise AssertionError(f"no resume command printed:\n{stderr}")


# --------------------------------------------------------------------------- crashes


def test_sigkill_at_random_moments_then_resume_loses_and_duplicates_nothing(
    tmp_path: Path, start: Callable[..., Running], ratelane: InProcessCli
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    ids = write_input(source, 1000)
    argv = command("run", source, "-o", output, "--max-concurrency", "32")
    fake = FakeOpenAI(api_key=KEY, latency=Latency(0.004, sigma=0.5), seed=seed)
    with fake.run_in_thread() as server:
        env = cli_env(server)
        # The first kill lands as soon as the lock is taken (usually before any result).
        running = start(argv, env)
        lock = Path(f"{output}.lock")
        wait_until(lambda: lock.exists() and lock.read_bytes().strip() != b"", "the lock")
        running.kill()
        for kill in range(3):
            have = line_count(output)
            target = have + rng.randrange(1, 250)
            running = start(argv, env)
            wait_until(
                has_lines(output, target),
                f"kill {kill}: {target} lines (seed {seed})",
                process=running,
            )
            running.kill()
            assert running.process.returncode == -signal.SIGKILL
            kept = complete_lines(output)
            assert len({line["custom_id"] for line in kept}) == len(kept), f"seed {seed}"
        assert line_count(output) < len(ids)  # the kills landed mid-run
        final = ratelane(*argv[3:], env=env)  # the resume needs no process boundary
        assert final.returncode == 0, final.stderr
        assert_each_once(output, ids)
        assert server.ledger.by_status.get(200, 0) >= len(ids)


def test_a_torn_last_line_is_repaired_and_its_request_sent_again(
    tmp_path: Path, ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    ids = write_input(source, 40)
    with FakeOpenAI(api_key=KEY).run_in_thread() as server:
        env = cli_env(server)
        first = ratelane("run", source, "-o", output, env=env)
        assert first.returncode == 0, first.stderr
        data = output.read_bytes()
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        torn_id = orjson.loads(data[last_start:])["custom_id"]
        output.write_bytes(data[: last_start + 25])  # a crash mid-write of the last line
        sent = server.ledger.total

        second = ratelane("run", source, "-o", output, env=env)
        assert second.returncode == 0, second.stderr
        assert "incomplete last line" in second.stderr
        assert [entry.custom_id for entry in server.ledger.entries[sent:]] == [torn_id]
        assert_each_once(output, ids)


# --------------------------------------------------------------------------- signals


def test_sigint_stops_cleanly_prints_the_resume_command_and_resume_completes(
    tmp_path: Path, start: Callable[..., Running], ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    ids = write_input(source, 600)
    with FakeOpenAI(api_key=KEY, latency=0.02).run_in_thread() as server:
        env = cli_env(server)
        running = start(command("run", source, "-o", output, "--max-concurrency", "8"), env)
        wait_until(has_lines(output, 100), "100 results", process=running)
        running.process.send_signal(signal.SIGINT)
        assert running.wait() == 130, running.stderr
        stderr = running.stderr
        assert "SIGINT: stopping" in stderr
        assert "interrupted" in stderr
        kept = complete_lines(output)
        assert output.read_bytes().endswith(b"\n")
        assert 100 <= len(kept) < len(ids)
        assert len({line["custom_id"] for line in kept}) == len(kept)
        resume = resume_command_in(stderr)
        assert resume[-4:] == ["-o", str(output), "--max-concurrency", "8"]
    # The resume against a server without the 20 ms latency: 8 at a time, quickly.
    with FakeOpenAI(api_key=KEY).run_in_thread() as fast:
        finished = run_resume(ratelane, resume, cli_env(fast))
        assert finished.returncode == 0, finished.stderr
        assert f"{len(kept):,} skipped" in finished.stderr
        assert fast.ledger.total == len(ids) - len(kept)
        assert_each_once(output, ids)


def test_a_second_sigint_abandons_stalled_requests_at_once(
    tmp_path: Path, start: Callable[..., Running], ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    ids = write_input(source, 400)
    faults = Faults(stall=0.3, stall_s=60, stall_then="answer")
    with FakeOpenAI(api_key=KEY, faults=faults).run_in_thread() as server:
        env = cli_env(server)
        argv = command("run", source, "-o", output, "--rpm", "100000", "--tpm", "1e9")
        running = start(argv, env)
        wait_until(has_lines(output, 20), "20 results", process=running)
        running.process.send_signal(signal.SIGINT)
        wait_until(lambda: "stopping" in running.stderr, "the first SIGINT", process=running)
        began = time.monotonic()
        running.process.send_signal(signal.SIGINT)
        assert running.wait() == 130, running.stderr
        assert time.monotonic() - began < 5  # far less than the 10 s grace
        assert "second SIGINT: abandoning" in running.stderr
        kept = complete_lines(output)
        assert output.read_bytes().endswith(b"\n")
        assert len({line["custom_id"] for line in kept}) == len(kept)
        resume = resume_command_in(running.stderr)
    with FakeOpenAI(api_key=KEY).run_in_thread() as healthy:
        done = run_resume(ratelane, resume, cli_env(healthy))
        assert done.returncode == 0, done.stderr
        assert healthy.ledger.total == len(ids) - len(kept)
        assert_each_once(output, ids)


def test_the_grace_period_ends_a_stuck_shutdown(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    write_input(source, 50)
    faults = Faults(stall=1.0, stall_s=60, stall_then="answer")
    # The real CLI with a 0.5 s grace instead of GRACE_S, so the test does not wait 10 s.
    script = (
        "import sys, ratelane._cli.run as run_command; run_command.GRACE_S = 0.5; "
        "from ratelane._cli.main import main; sys.argv[0] = 'ratelane'; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    with FakeOpenAI(api_key=KEY, faults=faults).run_in_thread() as server:
        argv = [sys.executable, "-c", script, "run", str(source), "-o", str(output),
                "--rpm", "100000", "--tpm", "1e9"]  # fmt: skip
        running = start(argv, cli_env(server))
        wait_until(lambda: server.ledger.total >= 10, "requests in flight", process=running)
        running.process.send_signal(signal.SIGTERM)
        assert running.wait() == 130, running.stderr
        stderr = running.stderr
        assert "SIGTERM: stopping" in stderr
        assert "0.5 s grace period over: abandoning" in stderr
        assert "ratelane run " in stderr  # the resume command
        assert output.read_bytes() == b""


# --------------------------------------------------------------------------- lock


def test_a_second_run_on_the_same_output_refuses(
    tmp_path: Path, start: Callable[..., Running], ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    ids = write_input(source, 300)
    with FakeOpenAI(api_key=KEY, latency=0.05).run_in_thread() as server:
        env = cli_env(server)
        argv = command("run", source, "-o", output, "--max-concurrency", "2")
        first = start(argv, env)
        wait_until(has_lines(output, 2), "the first results", process=first)

        second = ratelane(*argv[3:], env=env)  # another process holds the lock
        assert second.returncode == 2, second.stderr
        assert "being written by another ratelane run" in second.stderr
        assert f"pid {first.process.pid}" in second.stderr
        assert "Nothing was sent" in second.stderr

        first.process.send_signal(signal.SIGTERM)
        assert first.wait() == 130, first.stderr
    # Lock released: a new run may resume now (against a server without the latency).
    with FakeOpenAI(api_key=KEY).run_in_thread() as fast:
        third = ratelane(*argv[3:-2], "--max-concurrency", "32", env=cli_env(fast))
        assert third.returncode == 0, third.stderr
        assert_each_once(output, ids)


# --------------------------------------------------------------------------- fatal


def test_an_invalid_key_stops_with_exit_3_and_the_right_key_resumes(
    tmp_path: Path, ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    ids = write_input(source, 200)
    wrong = "sk-wrong-key-123456789"
    with FakeOpenAI(api_key=KEY).run_in_thread() as server:
        argv = ["run", source, "-o", output]
        stopped = ratelane(*argv, env=cli_env(server, key=wrong))
        assert stopped.returncode == 3, stopped.stderr
        assert "invalid_api_key" in stopped.stderr
        assert "check OPENAI_API_KEY" in stopped.stderr
        assert "python -m ratelane run" in stopped.stderr
        assert wrong not in stopped.stderr + stopped.stdout
        assert server.ledger.by_status.get(200, 0) == 0
        assert server.ledger.total < 10  # stopped at once, not one 401 per line
        assert output.read_bytes() == b""

        resumed = ratelane(*argv, env=cli_env(server))
        assert resumed.returncode == 0, resumed.stderr
        assert_each_once(output, ids)


def test_an_exhausted_quota_stops_with_exit_3(tmp_path: Path, ratelane: InProcessCli) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    write_input(source, 100)
    with FakeOpenAI(api_key=KEY, faults=Faults(quota=1.0)).run_in_thread() as server:
        stopped = ratelane("run", source, "-o", output, env=cli_env(server))
        assert stopped.returncode == 3, stopped.stderr
        assert "insufficient_quota" in stopped.stderr
        assert "billing" in stopped.stderr
