"""Peak memory of ``ratelane run`` does not grow with the input: 11,000 lines vs 1,000.

Each run is a fresh CLI process against a zero-latency fake server (a thread
of the pytest process); its peak RSS is ``ru_maxrss`` as seen by a small wrapper
process that started it (see ``WRAPPER``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ratelane.testing import FakeOpenAI

TIMEOUT_S = 60
SMALL, LARGE = 1_000, 11_000
#: Extra peak RSS allowed for the 10,000 more lines: anything that keeps 400 bytes a
#: line (a Result, a dict, a line's bytes) would exceed it. What does grow: 8 bytes
#: a line for duplicate detection during validation (0.04 MB here); measured growth
#: is about 0.5 MB in all.
MARGIN_MB = (LARGE - SMALL) * 400 / 1e6


@pytest.fixture(scope="module")
def fake_server_url() -> Iterator[str]:
    # Unlimited: the default tier-5 account (500 requests/s) would make this a rate test.
    # A thread of this process (idle while it waits for the measured CLI process).
    fake = FakeOpenAI(api_key="sk-fake", rpm=None, tpm=None, ledger_limit=100, store_limit=100)
    with fake.run_in_thread() as server:
        yield server.base_url


def write_input(path: Path, count: int) -> None:
    # Lines of about 1.2 KB: anything that holds INPUT itself (a read-whole-file, a memory
    # map whose touched pages count in RSS) grows by 12 MB here, three times the margin.
    padding = "lorem ipsum dolor sit amet " * 40
    with path.open("wb") as file:
        for n in range(count):
            line = {
                "custom_id": f"request-{n}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "gpt-4.1-mini", "input": f"item {n}: {padding}",
                         "max_output_tokens": 64},
            }  # fmt: skip
            file.write(orjson.dumps(line) + b"\n")


#: Runs the command given as arguments and prints its peak RSS. A fresh, small
#: process per run: a child's ru_maxrss starts from its parent's RSS at fork
#: time (vfork shares the parent's memory until exec), so measuring from the
#: big pytest process would report pytest's size, not the CLI's.
WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(code)"
)


def peak_rss_mb(tmp_path: Path, count: int, base_url: str) -> float:
    source = tmp_path / f"in-{count}.jsonl"
    output = tmp_path / f"out-{count}.jsonl"
    write_input(source, count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY="sk-fake", OPENAI_BASE_URL=base_url)
    argv = [sys.executable, "-m", "ratelane", "run", str(source), "-o", str(output)]
    measured = subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert measured.returncode == 0, measured.stderr
    assert output.read_bytes().count(b"\n") == count
    scale = 1 / (1 << 20) if sys.platform == "darwin" else 1 / 1024  # bytes vs KiB
    return int(measured.stdout) * scale


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_input(tmp_path: Path, fake_server_url: str) -> None:
    small = peak_rss_mb(tmp_path, SMALL, fake_server_url)
    large = peak_rss_mb(tmp_path, LARGE, fake_server_url)
    text = f"{SMALL:,} lines: {small:.1f} MB, {LARGE:,} lines: {large:.1f} MB"
    print(f"peak RSS: {text}")
    assert large - small < MARGIN_MB, text
