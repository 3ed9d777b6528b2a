"""The resume marker (``<OUTPUT>.resume.json``): a resume reads only past the done prefix.

The marker's promise is checked as a property over random runs (results out of
order, failures, lines already done, blank lines) through the real INPUT
reader; then, against the fake server on 127.0.0.1, that a resume takes the
fast path, that a changed INPUT or a cut/replaced OUTPUT falls back to a sound
start, and that SIGKILL at random moments followed by a fast resume loses and
duplicates nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import ratelane
from ratelane._files import marker
from ratelane._files.checkpoint import DoneSet
from ratelane._files.file_run import _requests
from ratelane._files.marker import START, DonePrefix, load_checkpoint, marker_path
from ratelane._files.validated import Fingerprint
from ratelane.testing import FakeOpenAI, Latency

MODEL = "gpt-4.1-mini"


def batch_line(custom_id: str) -> bytes:
    return orjson.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": MODEL, "input": f"say {custom_id}"},
        }
    )


def write_input(path: Path, count: int) -> list[str]:
    ids = [f"r-{n}" for n in range(count)]
    path.write_bytes(b"".join(batch_line(custom_id) + b"\n" for custom_id in ids))
    return ids


def output_ids(path: Path) -> list[str]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [orjson.loads(raw)["custom_id"] for raw in data.splitlines()]


def options(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"api_key": server.api_key, "base_url": server.base_url, "progress": False, **extra}


def keep_lines(path: Path, count: int) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:count]))


# --------------------------------------------------------------------------- the property


def _random_input(path: Path, rng: random.Random) -> list[tuple[int, str]]:
    """Write an INPUT with blank lines here and there; ``(start offset, id)`` of each request."""
    data = bytearray()
    lines = []
    for n in range(rng.randrange(1, 80)):
        while rng.random() < 0.15:
            data += b"  \n"
        lines.append((len(data), f"id-{n}"))
        data += batch_line(f"id-{n}") + b"\n"
    if rng.random() < 0.5:
        data += b"\n"
    path.write_bytes(bytes(data))
    return lines


def _check_marker(
    data: bytes,
    lines: list[tuple[int, str]],
    marker: tuple[tuple[int, int, int], int],
    done_at: dict[str, int],
    size: int,
) -> None:
    (offset, line, done_lines), scan_from = marker
    below = [custom_id for start, custom_id in lines if start < offset]
    assert done_lines == len(below)
    assert line == data.count(b"\n", 0, offset)  # physical lines, blank ones included
    assert offset == 0 or data[offset - 1 : offset] == b"\n"
    for custom_id in below:  # never claims a line whose success is not in OUTPUT
        assert custom_id in done_at and done_at[custom_id] < size, custom_id
    for _, custom_id in lines[len(below) :]:  # and a resume reading from scan_from finds
        if custom_id in done_at:  # every success of a later line
            assert done_at[custom_id] >= scan_from, custom_id


def test_the_marker_never_claims_a_line_whose_success_is_not_in_output(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    for seed in range(300):
        rng = random.Random(seed)
        lines = _random_input(source, rng)
        data = source.read_bytes()
        # OUTPUT already holds some successes, read from scan_start on (as a resume does).
        scan_start = rng.randrange(0, 500)
        earlier = [custom_id for _, custom_id in lines if rng.random() < 0.3]
        size = scan_start + 60 * len(earlier)
        done_at = {custom_id: rng.randrange(scan_start, size) for custom_id in earlier}
        prefix = DonePrefix(START, scan_from=scan_start, done=len(earlier))
        feed = _requests(source, DoneSet(earlier), None, prefix)
        in_flight: list[str] = []
        exhausted = False
        while not exhausted or in_flight:
            if not exhausted and (not in_flight or rng.random() < 0.4):
                item = next(feed, None)
                if item is None:
                    exhausted = True
                else:
                    in_flight.append(item[1].custom_id)
            else:  # results finish out of order; a few fail (sent again on resume)
                custom_id = in_flight.pop(rng.randrange(len(in_flight)))
                if rng.random() < 0.93:
                    prefix.succeeded(custom_id, size)
                    done_at[custom_id] = size
                    size += rng.randrange(40, 90)
                else:
                    prefix.failed(custom_id, size)
            _check_marker(data, lines, prefix.marker(size), done_at, size)


def test_the_prefix_passes_only_contiguous_successes() -> None:
    prefix = DonePrefix()
    prefix.frontier = (10, 1, 1)
    prefix.sent("a", (10, 1, 1))
    prefix.frontier = (20, 2, 2)
    prefix.sent("b", (20, 2, 2))
    prefix.frontier = (30, 3, 3)
    assert prefix.marker(100) == ((10, 1, 1), 100)
    prefix.succeeded("b", 100)  # out of order: the prefix waits for "a"
    assert prefix.marker(150) == ((10, 1, 1), 100)
    prefix.succeeded("a", 150)
    assert prefix.marker(200) == ((30, 3, 3), 200)
    prefix.sent("c", (30, 3, 3))
    prefix.frontier = (40, 4, 4)
    prefix.failed("c", 200)  # frozen before "c" for the rest of the run
    prefix.sent("d", (40, 4, 4))
    prefix.succeeded("d", 200)
    assert prefix.marker(300) == ((30, 3, 3), 200)


def test_one_stuck_request_cannot_make_the_window_grow_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(marker, "MAX_WINDOW", 3)
    prefix = DonePrefix()
    for n in range(10):
        prefix.sent(f"r{n}", (n * 10, n, n))
        prefix.frontier = (n * 10 + 10, n + 1, n + 1)
    for n in range(1, 10):  # r0 never finishes
        prefix.succeeded(f"r{n}", 100 + n)
    assert prefix.marker(500) == ((0, 0, 0), 101)
    assert len(prefix._queue) == len(prefix._pending) == len(prefix._written) == 0


# --------------------------------------------------------------------------- through run_file


async def test_a_resume_takes_the_fast_path_and_sends_each_missing_line_once(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 300)
    seen = 0

    def stop_after_120(result: ratelane.Result) -> None:
        nonlocal seen
        seen += 1
        if seen == 120:
            first.stop()

    run_options = ratelane.FileRunOptions(**options(fake_openai, max_concurrency=16))
    first = ratelane.FileRun(source, output, options=run_options, on_result=stop_after_120)
    stopped = await first.run()
    assert stopped.fast_resume is False  # nothing to resume from
    kept = output_ids(output)
    checkpoint, _ = load_checkpoint(output, source, Fingerprint.of(source))
    assert checkpoint is not None and 0 < checkpoint.done_lines <= len(kept)

    again = await ratelane.arun_file(source, output, **options(fake_openai))
    assert again.ok and again.fast_resume and again.revalidated is False
    assert again.skipped == len(kept)
    assert fake_openai.ledger.total == len(ids)  # every request sent exactly once
    assert sorted(output_ids(output)) == sorted(ids)

    # Done: the marker now covers all of INPUT, so nothing is read and nothing is sent.
    nothing = await ratelane.arun_file(source, output, **options(fake_openai))
    assert nothing.ok and nothing.fast_resume
    assert (nothing.skipped, nothing.stats.completed) == (len(ids), 0)
    assert fake_openai.ledger.total == len(ids)


async def _half_done(tmp_path: Path, server: FakeOpenAI, count: int = 200) -> list[str]:
    """INPUT of ``count`` lines, the first half done, the marker written after every line."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, count)
    half = tmp_path / "half.jsonl"
    half.write_bytes(b"".join(source.read_bytes().splitlines(keepends=True)[: count // 2]))
    assert (await ratelane.arun_file(half, output, **options(server))).ok
    # The same OUTPUT, now for the whole INPUT: the marker was for another file.
    first = await ratelane.arun_file(source, output, **options(server, fsync_interval_s=0))
    assert first.ok and not first.fast_resume
    return ids


@pytest.mark.parametrize(
    ("damage", "fast"),
    [
        ("input appended", False),
        ("input rewritten", False),
        ("output cut in half", True),  # an older checkpoint is still intact
        ("output emptied", False),
        ("output replaced", False),
        ("marker garbled", False),
    ],
)
async def test_a_changed_input_or_output_never_misleads_a_resume(
    tmp_path: Path, fake_openai: FakeOpenAI, damage: str, fast: bool
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = await _half_done(tmp_path, fake_openai)
    if damage == "input appended":
        with source.open("ab") as file:
            file.write(batch_line("extra") + b"\n")
        ids.append("extra")
    elif damage == "input rewritten":  # same size, same mtime: only the ctime moves
        stat = source.stat()
        source.write_bytes(source.read_bytes().replace(b'"say r-1"', b'"say r-7"'))
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif damage == "output cut in half":
        keep_lines(output, len(ids) // 2 + 25)
    elif damage == "output emptied":
        output.write_bytes(b"")
    elif damage == "output replaced":
        copy = tmp_path / "copy.jsonl"
        copy.write_bytes(output.read_bytes())
        os.replace(copy, output)
    else:
        path = marker_path(output)
        path.write_bytes(path.read_bytes()[:-20])
    kept = output_ids(output)
    sent_before = fake_openai.ledger.total

    resumed = await ratelane.arun_file(source, output, **options(fake_openai))
    assert resumed.ok
    assert resumed.fast_resume is fast
    assert sorted(output_ids(output)) == sorted(ids)  # each exactly once
    assert fake_openai.ledger.total - sent_before == len(ids) - len(kept)


# --------------------------------------------------------------------------- crashes

# Imports ratelane once, then forks a fresh run for each line read from stdin and
# prints its pid, then its wait status: a kill costs a fork, not an interpreter start.
_ZYGOTE = """
import os, sys, ratelane
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        ratelane.run_file(sys.argv[1], sys.argv[2], api_key=sys.argv[3], base_url=sys.argv[4],
                          progress=False, max_concurrency=32, fsync_interval_s=0.01)
        os._exit(0)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _complete_ids(path: Path) -> list[str]:
    """The ids of OUTPUT's complete lines (a kill may leave a torn last one)."""
    data = path.read_bytes()
    return [orjson.loads(raw)["custom_id"] for raw in data[: data.rfind(b"\n") + 1].splitlines()]


def test_sigkill_at_random_moments_then_a_fast_resume_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 1000)
    fake = FakeOpenAI(latency=Latency(0.004, sigma=0.8), seed=seed)
    with fake.run_in_thread() as server:
        argv = [sys.executable, "-c", _ZYGOTE, source, output, server.api_key, server.base_url]
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as zygote:
            assert zygote.stdin is not None and zygote.stdout is not None
            for kill in range(3):
                target = _line_count(output) + rng.randrange(30, 200)
                zygote.stdin.write("run\n")
                zygote.stdin.flush()
                pid = int(zygote.stdout.readline())
                deadline = time.monotonic() + 20
                while _line_count(output) < target or not marker_path(output).exists():
                    os.kill(pid, 0)  # still running (the zygote reaps it when it ends)
                    assert time.monotonic() < deadline, f"kill {kill}: {target} lines (seed {seed})"
                    time.sleep(0.002)
                os.kill(pid, signal.SIGKILL)
                assert int(zygote.stdout.readline()) == signal.SIGKILL  # its wait status
                kept = _complete_ids(output)
                assert len(set(kept)) == len(kept), f"seed {seed}"
        assert _line_count(output) < len(ids)  # the kills landed mid-run
    kept = _complete_ids(output)
    with FakeOpenAI().run_in_thread() as healthy:
        resumed = ratelane.run_file(source, output, **options(healthy))
    assert resumed.ok and resumed.fast_resume, f"seed {seed}"
    assert sorted(output_ids(output)) == sorted(ids), f"seed {seed}"
    assert healthy.ledger.total == len(ids) - len(kept), f"seed {seed}"
