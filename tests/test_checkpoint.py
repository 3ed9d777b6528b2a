"""Checkpoint files: line shapes, torn-tail repair, the done-set, the lock, the writer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelane._core.errors import ConfigurationError, OutputLockedError
from ratelane._core.models import ErrorInfo, Result
from ratelane._files import input as _batch_input
from ratelane._files.checkpoint import (
    DoneSet,
    OutputLock,
    ResultWriter,
    failure_line,
    repair_torn_tail,
    success_line,
)


def ok_result(custom_id: str, **fields: object) -> Result:
    values: dict[str, object] = {
        "index": 0,
        "custom_id": custom_id,
        "ok": True,
        "status_code": 200,
        "raw_body": b'{"id": "resp_1", "output": []}',
        "request_id": "req_abc",
        "attempts": 2,
        "latency_s": 0.1234567,
        "dropped_params": ("temperature",),
    }
    values.update(fields)
    return Result(**values)  # type: ignore[arg-type]


def http_failure(custom_id: str) -> Result:
    return Result(
        index=1,
        custom_id=custom_id,
        ok=False,
        status_code=400,
        raw_body=orjson.dumps(
            {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}
        ),
        error=ErrorInfo("x", "bad", "invalid_request_error", "input"),
        request_id="req_400",
        attempts=1,
    )


def transport_failure(custom_id: str) -> Result:
    return Result(
        index=2, custom_id=custom_id, ok=False, error=ErrorInfo("timeout", "timed out"), attempts=3
    )


# ----------------------------------------------------------------------------- line shapes


def test_success_line_shape() -> None:
    line = success_line(ok_result("a"), line_id="batch_req_1")
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert orjson.loads(line) == {
        "id": "batch_req_1",
        "custom_id": "a",
        "response": {
            "status_code": 200,
            "request_id": "req_abc",
            "body": {"id": "resp_1", "output": []},
        },
        "error": None,
        "ratelane": {"attempts": 2, "latency_s": 0.123457, "dropped_params": ["temperature"]},
    }


def test_line_ids_are_fresh_batch_request_ids() -> None:
    first = orjson.loads(success_line(ok_result("a")))["id"]
    second = orjson.loads(success_line(ok_result("a")))["id"]
    assert first.startswith("batch_req_")
    assert len(first) == len("batch_req_") + 32
    assert first != second


def test_http_failure_line_keeps_the_last_response() -> None:
    line = orjson.loads(failure_line(http_failure("b"), line_id="batch_req_2"))
    assert line == {
        "id": "batch_req_2",
        "custom_id": "b",
        "response": {
            "status_code": 400,
            "request_id": "req_400",
            "body": {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}},
        },
        "error": {"code": "x", "message": "bad"},
        "ratelane": {"attempts": 1, "latency_s": 0.0, "dropped_params": []},
    }


def test_transport_failure_line_has_null_response() -> None:
    line = orjson.loads(failure_line(transport_failure("c")))
    assert line["response"] is None
    assert line["error"] == {"code": "timeout", "message": "timed out"}


def test_line_functions_refuse_the_other_kind() -> None:
    with pytest.raises(ValueError, match="failure_line"):
        success_line(http_failure("b"))
    with pytest.raises(ValueError, match="success_line"):
        failure_line(ok_result("a"))


def test_the_server_bytes_are_embedded_verbatim() -> None:
    raw = b'{"id":"resp_1","text":"caf\\u00e9 \xe2\x98\x95","n":1.50}'
    line = success_line(ok_result("a", raw_body=raw))
    assert raw in line
    assert orjson.loads(line)["response"]["body"] == orjson.loads(raw)


def test_pretty_printed_server_json_still_makes_one_line() -> None:
    raw = b'{\n  "id": "resp_1",\n  "output": []\n}\n'
    line = success_line(ok_result("a", raw_body=raw))
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert orjson.loads(line)["response"]["body"] == {"id": "resp_1", "output": []}


# ----------------------------------------------------------------------------- torn tail


def line_of(custom_id: str) -> bytes:
    return success_line(ok_result(custom_id), line_id="batch_req_x")


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        pytest.param(b"", b"", id="empty"),
        pytest.param(b'{"id": "batch_re', b"", id="all-one-torn-line"),
        pytest.param(b"A" + b'{"custom_id": "b"', b"A", id="no-newline"),
        pytest.param(b"A" + b'{"custom_id": "b"}', b"A", id="parseable-but-no-newline"),
        pytest.param(b"A" + b'{"custom_id": "b"\n', b"A", id="invalid-json-last-line"),
        pytest.param(b"A" + b'{"custom_id": \n\n  \n', b"A", id="invalid-before-blank-lines"),
        pytest.param(b"AA", b"AA", id="whole-lines"),
        pytest.param(b"A\n\n", b"A\n\n", id="trailing-blank-lines-kept"),
        pytest.param(b"\n \n", b"\n \n", id="only-blank-lines"),
        pytest.param(b"   ", b"", id="whitespace-without-newline"),
    ],
)
def test_repair_torn_tail(tmp_path: Path, content: bytes, kept: bytes) -> None:
    whole = line_of("a")
    path = tmp_path / "out.jsonl"
    path.write_bytes(content.replace(b"A", whole))

    removed = repair_torn_tail(path)

    assert path.read_bytes() == kept.replace(b"A", whole)
    assert removed == len(content.replace(b"A", whole)) - len(kept.replace(b"A", whole))


def test_repair_missing_file_is_a_no_op(tmp_path: Path) -> None:
    assert repair_torn_tail(tmp_path / "absent.jsonl") == 0
    assert not (tmp_path / "absent.jsonl").exists()


def test_repair_reads_backwards_across_blocks(tmp_path: Path) -> None:
    """A last line longer than the 64 KiB scan block, torn and whole."""
    big = success_line(
        ok_result("big", raw_body=orjson.dumps({"text": "x" * 200_000})), line_id="batch_req_b"
    )
    path = tmp_path / "out.jsonl"
    path.write_bytes(line_of("a") + big)
    assert repair_torn_tail(path) == 0
    path.write_bytes(line_of("a") + big[:-1])
    assert repair_torn_tail(path) == len(big) - 1
    assert path.read_bytes() == line_of("a")


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8),
    cut=st.floats(min_value=0, max_value=1),
)
def test_any_truncation_repairs_to_whole_lines(tmp_path: Path, ids: list[str], cut: float) -> None:
    lines = [
        success_line(
            ok_result(custom_id, raw_body=orjson.dumps({"text": custom_id * 3})),
            line_id=f"batch_req_{n}",
        )
        if n % 3
        else failure_line(transport_failure(custom_id), line_id=f"batch_req_{n}")
        for n, custom_id in enumerate(ids)
    ]
    content = b"".join(lines)
    kept = int(cut * len(content))
    path = tmp_path / "out.jsonl"
    path.write_bytes(content[:kept])

    removed = repair_torn_tail(path)

    prefixes = [b"".join(lines[:count]) for count in range(len(lines) + 1)]
    longest_whole_prefix = max((p for p in prefixes if len(p) <= kept), key=len)
    assert path.read_bytes() == longest_whole_prefix
    assert removed == kept - len(longest_whole_prefix)


# ----------------------------------------------------------------------------- done set


def test_done_set_holds_exactly_the_success_ids(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    http_error_in_batch_shape = {
        "id": "batch_req_9",
        "custom_id": "http-400",
        "response": {"status_code": 400, "request_id": "r", "body": {}},
        "error": None,
    }
    path.write_bytes(
        line_of("a")
        + b"\n"
        + failure_line(http_failure("failed-http"))
        + failure_line(transport_failure("failed-transport"))
        + orjson.dumps(http_error_in_batch_shape)
        + b"\nnot json\n[1]\n"
        + success_line(ok_result("b"))
        + success_line(ok_result("a"))
        + success_line(ok_result("status-true", status_code=True))
        + success_line(ok_result("torn"))[:-1]
    )

    done = DoneSet.from_output(path)

    assert len(done) == 2
    assert "a" in done
    assert "b" in done
    for custom_id in ("failed-http", "failed-transport", "http-400", "status-true", "torn", "z"):
        assert custom_id not in done
    assert 42 not in done
    assert repr(done) == "<DoneSet size=2>"


def test_done_set_of_missing_output_is_empty(tmp_path: Path) -> None:
    done = DoneSet.from_output(tmp_path / "absent.jsonl")
    assert len(done) == 0
    assert "a" not in done


def test_done_set_across_many_sort_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_batch_input, "SORT_CHUNK", 100)
    ids = [f"id-{n}" for n in range(0, 5000, 2)]
    done = DoneSet(ids + ids[:50])
    assert len(done) == 2500
    assert all(f"id-{n}" in done for n in range(0, 5000, 2))
    assert not any(f"id-{n}" in done for n in range(1, 5000, 2))


def test_done_set_with_injected_hash() -> None:
    done = DoneSet(["aa", "b"], hash_function=lambda text: len(text) + 2**64)
    assert "xx" in done, "a collision looks done: the documented trade-off"
    assert "ccc" not in done


# ----------------------------------------------------------------------------- lock


def test_second_lock_on_same_output_fails(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    with OutputLock(output) as lock:
        assert lock.locked
        assert lock.lock_path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputLockedError) as caught:
            OutputLock(output).acquire()
        message = str(caught.value)
        assert str(output) in message
        assert f"pid {os.getpid()}" in message
        assert "another ratelane run" in message
    assert repr(lock) == f"<OutputLock {str(lock.lock_path)!r} free>"
    with OutputLock(output):
        pass


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from ratelane._files.checkpoint import OutputLock\n"
            "with OutputLock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
            str(output),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            OutputLock(output).acquire()
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    with OutputLock(output):
        pass


def test_lock_cannot_be_acquired_twice_by_the_same_object(tmp_path: Path) -> None:
    lock = OutputLock(tmp_path / "out.jsonl")
    with lock, pytest.raises(RuntimeError, match="already held"):
        lock.acquire()
    lock.release()  # releasing a free lock is harmless


# ----------------------------------------------------------------------------- writer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    return calls


def test_writer_appends_after_repair_and_truncates_errors(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    output.write_bytes(line_of("old") + b'{"torn')
    errors.write_bytes(b"stale failure from an earlier run\n")

    with ResultWriter(output, errors) as writer:
        assert writer.repaired_bytes == len(b'{"torn')
        writer.write(ok_result("new"))
        writer.write(http_failure("bad"))
        writer.write(transport_failure("slow"))
        assert (writer.succeeded, writer.failed) == (1, 2)
    assert writer.closed

    output_lines = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert [line["custom_id"] for line in output_lines] == ["old", "new"]
    error_lines = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert [line["custom_id"] for line in error_lines] == ["bad", "slow"]
    done = DoneSet.from_output(output)
    assert ("old" in done, "new" in done, "bad" in done) == (True, True, False)


def test_each_line_is_one_write_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    with ResultWriter(tmp_path / "o.jsonl", tmp_path / "e.jsonl") as writer:
        monkeypatch.setattr(os, "write", recording_write)
        writer.write(ok_result("a"))
        writer.write(transport_failure("b"))
    assert len(writes) == 2
    assert all(data.endswith(b"\n") and data.count(b"\n") == 1 for data in writes)


def test_writer_fsyncs_on_interval_and_close(tmp_path: Path, fsyncs: list[int]) -> None:
    clock = FakeClock()
    writer = ResultWriter(
        tmp_path / "o.jsonl", tmp_path / "e.jsonl", fsync_interval_s=1.0, clock=clock
    )
    writer.write(ok_result("a"))
    clock.now += 0.5
    writer.write(ok_result("b"))
    assert fsyncs == []
    clock.now += 0.5
    writer.write(ok_result("c"))
    assert len(fsyncs) == 2, "both files at once"
    clock.now += 0.9
    writer.write(ok_result("d"))
    assert len(fsyncs) == 2, "the interval restarts at the last fsync"
    writer.close()
    assert len(fsyncs) == 4
    writer.close()
    assert len(fsyncs) == 4, "closing twice does nothing"
    with pytest.raises(ValueError, match="closed"):
        writer.write(ok_result("e"))


def test_zero_interval_fsyncs_every_line(tmp_path: Path, fsyncs: list[int]) -> None:
    with ResultWriter(tmp_path / "o.jsonl", tmp_path / "e.jsonl", fsync_interval_s=0) as writer:
        for n in range(3):
            writer.write(ok_result(f"r{n}"))
        assert len(fsyncs) == 6


@pytest.mark.parametrize("interval", [-1.0, float("nan")])
def test_writer_rejects_bad_interval(tmp_path: Path, interval: float) -> None:
    with pytest.raises(ConfigurationError, match="fsync_interval_s"):
        ResultWriter(tmp_path / "o.jsonl", tmp_path / "e.jsonl", fsync_interval_s=interval)


def test_writer_rejects_errors_equal_to_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="must differ"):
        ResultWriter(tmp_path / "o.jsonl", tmp_path / "." / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_done_set_fast_path_agrees_with_a_full_parse(tmp_path: Path) -> None:
    tricky = [
        b'{"id":"resp_1","error":null,"text":"\\",\\"error\\":null,\\"ratelane\\":{"}',
        b'{"error":{"code":"x"},"nested":{"error":null}}',
        b"{}",
    ]
    lines = [success_line(ok_result(f"ok-{n}", raw_body=raw)) for n, raw in enumerate(tricky)]
    lines.append(success_line(ok_result('quote"d', raw_body=b"{}")))
    lines.append(failure_line(http_failure("failed")))
    lines.append(b'{"custom_id":"foreign","response":{"status_code":201},"error":null}\n')
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"".join(lines))
    done = DoneSet.from_output(output)
    for custom_id in ("ok-0", "ok-1", "ok-2", 'quote"d', "foreign"):
        assert custom_id in done
    assert "failed" not in done
    assert len(done) == 5


@pytest.mark.parametrize("count", [0, 1, 2, 15, 16, 17, 33, 1000])
def test_done_set_finds_ids_at_every_bucket_edge(count: int) -> None:
    # Hashes at both ends of the int64 range and spread between them.
    step = ((1 << 64) - 1) // max(count, 1)
    values = {f"id-{n}": -(1 << 63) + n * step for n in range(count)}
    values["top"] = (1 << 63) - 1
    values["absent"] = 12345
    done = DoneSet([*list(values)[:count], "top"], hash_function=values.__getitem__)
    assert all(f"id-{n}" in done for n in range(count))
    assert "top" in done
    assert ("absent" in done) == (12345 in [values[f"id-{n}"] for n in range(count)])


# -- append_soon: one os.write per pass of the event loop -----------------------------


def test_append_soon_writes_a_pass_of_lines_at_once_in_offset_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from ratelane._files import checkpoint

    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(fd)
        return real_write(fd, data)

    monkeypatch.setattr(checkpoint.os, "write", counting_write)
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"

    async def scenario() -> list[int]:
        with ResultWriter(output, errors) as writer:
            offsets = [writer.append_soon(ok_result(f"a{i}")) for i in range(5)]
            assert writer.append_soon(http_failure("bad")) == -1
            assert output.read_bytes() == b""  # nothing written before the pass ends
            await asyncio.sleep(0)
            assert len(writes) == 2  # one write for OUTPUT, one for ERRORS
            offsets.append(writer.append_soon(ok_result("b0")))
            offsets.append(writer.append(ok_result("b1")))  # immediate: earlier lines first
            return offsets

    offsets = asyncio.run(scenario())
    data = output.read_bytes()
    lines = data.splitlines(keepends=True)
    assert [orjson.loads(line)["custom_id"] for line in lines] == [
        "a0",
        "a1",
        "a2",
        "a3",
        "a4",
        "b0",
        "b1",
    ]
    starts = [sum(len(line) for line in lines[:i]) for i in range(len(lines))]
    assert offsets == starts
    assert [orjson.loads(line)["custom_id"] for line in errors.read_bytes().splitlines()] == ["bad"]


def test_append_soon_raises_a_failed_write_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from ratelane._files import checkpoint

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    async def scenario() -> None:
        writer = ResultWriter(tmp_path / "out.jsonl", tmp_path / "errors.jsonl")
        writer.append_soon(ok_result("a"))
        monkeypatch.setattr(checkpoint.os, "write", full_disk)
        await asyncio.sleep(0)  # the pass ends: the write fails in the loop's callback
        with pytest.raises(OSError, match="No space left"):
            writer.append_soon(ok_result("b"))
        with pytest.raises(OSError, match="No space left"):
            writer.close()

    asyncio.run(scenario())
