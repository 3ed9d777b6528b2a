"""Sharding by a stable hash of custom_id, and ``ratelane merge`` of the shard outputs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import orjson
import pytest

from ratelane._cli.main import main
from ratelane._core.errors import ConfigurationError
from ratelane._core.models import ErrorInfo, Result
from ratelane._files.checkpoint import failure_line, success_line
from ratelane._files.merge import merge_outputs, missing_ids
from ratelane._files.shard import Shard, shard_of

# --------------------------------------------------------------------------- sharding

PINNED = [
    ("q1", 4, 3),
    ("request-000001", 16, 5),
    ("héllo wörld", 7, 6),
    ("a" * 200, 1000, 452),
    ("", 3, 1),
]


@pytest.mark.parametrize(("custom_id", "count", "shard"), PINNED)
def test_shard_of_is_pinned_forever(custom_id: str, count: int, shard: int) -> None:
    assert shard_of(custom_id, count) == shard
    # The documented formula, so any language can compute it.
    digest = hashlib.blake2b(custom_id.encode("utf-8")).digest()
    assert int.from_bytes(digest[:8], "big") % count == shard


def test_shard_of_is_the_same_in_another_process() -> None:
    """Not Python's hash(): a fresh interpreter with another hash seed agrees."""
    code = (
        "from ratelane._files.shard import shard_of; "
        f"print([shard_of(c, n) for c, n, _ in {PINNED!r}])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == repr([shard for _, _, shard in PINNED])


def test_shards_are_balanced_and_cover_every_id_once() -> None:
    ids = [f"row-{number}" for number in range(20_000)]
    shards = [Shard(index, 4) for index in range(4)]
    owners = Counter(sum(custom_id in shard for shard in shards) for custom_id in ids)
    assert owners == {1: len(ids)}
    sizes = Counter(shard_of(custom_id, 4) for custom_id in ids)
    assert all(abs(size - 5_000) < 300 for size in sizes.values()), sizes


def test_shard_of_accepts_lone_surrogates_from_json() -> None:
    custom_id = orjson.loads(b'"x"') + "\ud800"  # json.loads('"\\ud800"') makes these
    assert 0 <= shard_of(custom_id, 5) < 5


@pytest.mark.parametrize(
    ("text", "shard"), [("0/4", Shard(0, 4)), (" 3 / 4 ", Shard(3, 4)), ("0/1", Shard(0, 1))]
)
def test_shard_parse(text: str, shard: Shard) -> None:
    assert Shard.parse(text) == shard
    assert str(shard) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["4/4", "1/0", "a/b", "-1/4", "1", "", "1/2/3"])
def test_shard_parse_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(ConfigurationError, match="HINT"):
        Shard.parse(text)


# --------------------------------------------------------------------------- merge


def _success(custom_id: str, text: str = "ok") -> bytes:
    body = orjson.dumps({"id": "resp_1", "output": [{"type": "message", "text": text}]})
    result = Result(0, custom_id, True, 200, body, request_id="req_1", attempts=1)
    return success_line(result)


def _failure(custom_id: str, code: str = "server_error") -> bytes:
    error = ErrorInfo(code, "the server had an error")
    return failure_line(Result(0, custom_id, False, 500, b'{"error":{}}', error, attempts=6))


def _ids(path: Path) -> list[str]:
    return [orjson.loads(raw)["custom_id"] for raw in path.read_bytes().splitlines()]


def _write_input(path: Path, ids: list[str]) -> None:
    path.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": c, "method": "POST", "url": "/v1/responses", "body": {}})
            + b"\n"
            for c in ids
        )
    )


def _shard_outputs(tmp_path: Path, ids: list[str], *, count: int = 4) -> list[Path]:
    """What `ratelane run --shard I/N` leaves: OUT.I.jsonl and OUT.I.errors.jsonl each."""
    outputs = []
    for index in range(count):
        mine = [c for c in ids if shard_of(c, count) == index]
        output = tmp_path / f"out.{index}.jsonl"
        # The ids ending in 7 failed for good; the others succeeded.
        lines = [_success(c) for c in mine if not c.endswith("7")]
        output.write_bytes(b"".join(lines))
        errors = tmp_path / f"out.{index}.errors.jsonl"
        errors.write_bytes(b"".join(_failure(c) for c in mine if c.endswith("7")))
        outputs.append(output)
    return outputs


def test_four_shards_merge_to_exactly_the_input_ids_once_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [f"id-{number:04d}" for number in range(400)]
    _write_input(tmp_path / "input.jsonl", ids)
    outputs = _shard_outputs(tmp_path, ids)
    # A shard merged twice, a stale error for an id that later succeeded, a torn last line.
    with (tmp_path / "out.0.jsonl").open("ab") as shard_0:
        shard_0.write(_success("id-0000") + b'{"id": "batch_r')
    (tmp_path / "stale.errors.jsonl").write_bytes(_failure("id-0001") + _failure("id-0007"))
    files = [*outputs, tmp_path / "stale.errors.jsonl"]

    code = main(
        [
            "merge",
            *map(str, files),
            "-o",
            str(tmp_path / "merged.jsonl"),
            "--input",
            str(tmp_path / "input.jsonl"),
        ]
    )
    merged, errors = tmp_path / "merged.jsonl", tmp_path / "merged.errors.jsonl"
    successes, failures = _ids(merged), _ids(errors)
    assert sorted(successes + failures) == ids  # every id exactly once
    assert sorted(failures) == [c for c in ids if c.endswith("7")]
    assert all(orjson.loads(raw)["error"] is None for raw in merged.read_bytes().splitlines())
    assert code == 1  # the failed ones have no success: reported, exit 1
    err = capsys.readouterr().err
    assert "40 of 400 requests" in err and "40 failed, 0 never attempted" in err
    assert "dropped 2 duplicates, 1 errors of requests that succeeded elsewhere" in err
    assert "skipped 1 unreadable lines" in err
    assert not list(tmp_path.glob("*.merging"))


def test_merge_reports_counts_and_missing_ids(tmp_path: Path) -> None:
    ids = [f"id-{number:04d}" for number in range(100)]
    _write_input(tmp_path / "input.jsonl", [*ids, "never-sent-1", "never-sent-2"])
    outputs = _shard_outputs(tmp_path, ids)
    errors_files = [path.with_name(path.stem + ".errors.jsonl") for path in outputs]
    (tmp_path / "again.jsonl").write_bytes(outputs[1].read_bytes())  # shard 1 twice
    report = merge_outputs(
        [*outputs, *errors_files, tmp_path / "again.jsonl"],
        output=tmp_path / "m.jsonl",
        errors=tmp_path / "m.errors.jsonl",
    )
    assert report.successes == 90 and report.errors == 10
    assert report.duplicates == len(outputs[1].read_bytes().splitlines())
    assert report.files == 9 and report.skipped == 0
    missing = missing_ids(
        tmp_path / "input.jsonl", output=tmp_path / "m.jsonl", errors=tmp_path / "m.errors.jsonl"
    )
    assert (missing.requests, missing.missing, missing.failed, missing.unattempted) == (
        102,
        12,
        10,
        2,
    )
    assert "never-sent-1" in missing.shown


def test_merge_cli_finds_each_shards_errors_file_and_exits_0_when_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [f"ok-{number}" for number in range(50) if number % 10 != 7]  # none fails
    _write_input(tmp_path / "input.jsonl", ids)
    outputs = _shard_outputs(tmp_path, ids)
    code = main(
        ["merge", *map(str, outputs), "-o", str(tmp_path / "all.jsonl"), "--input",
         str(tmp_path / "input.jsonl")]
    )  # fmt: skip
    assert code == 0
    assert sorted(_ids(tmp_path / "all.jsonl")) == sorted(ids)
    assert "have a success" in capsys.readouterr().err


def test_merge_refuses_to_overwrite_an_input_and_names_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.0.jsonl"
    line = _success("a")
    output.write_bytes(line)
    assert main(["merge", str(output), "-o", str(output)]) == 2
    assert "HINT" in capsys.readouterr().err
    assert output.read_bytes() == line  # untouched
    assert main(["merge", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "m.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_memory_stays_flat_with_large_bodies(tmp_path: Path) -> None:
    """Bodies stream through: merging 40 MB of responses holds about none of them."""
    big = "x" * 200_000
    shards = [tmp_path / f"out.{index}.jsonl" for index in range(4)]
    for index, path in enumerate(shards):
        with path.open("wb") as file:
            for number in range(50):
                file.write(_success(f"s{index}-{number}", big))
    tracemalloc.start()
    try:
        report = merge_outputs(
            shards, output=tmp_path / "m.jsonl", errors=tmp_path / "m.errors.jsonl"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.successes == 200
    assert peak < 5_000_000, peak  # a few lines and buffers, not 40 MB
