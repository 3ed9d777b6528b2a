"""Batch-format input: validation messages with line numbers, duplicates, streaming."""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratelane._core.errors import ConfigurationError, InputError
from ratelane._core.models import Request
from ratelane._core.tokens import estimate_request_tokens
from ratelane._files import input as _batch_input
from ratelane._files.input import (
    BatchLine,
    ValidationReport,
    iter_batch_requests,
    iter_sorted_int64,
    validate_batch_file,
)

MISSING: Any = object()


def request_line(custom_id: Any = "r-1", **overrides: Any) -> dict[str, Any]:
    """A valid input line; an override of MISSING removes that key."""
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "m", "input": "hello there"},
    }
    line.update(overrides)
    return {key: value for key, value in line.items() if value is not MISSING}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Each item: dict (dumped), bytes (written raw) or str (encoded); newline added."""
    with path.open("wb") as file:
        for line in lines:
            if isinstance(line, dict):
                data = orjson.dumps(line)
            elif isinstance(line, bytes):
                data = line
            else:
                data = line.encode()
            file.write(data + b"\n")
    return path


@pytest.fixture
def input_path(tmp_path: Path) -> Path:
    return tmp_path / "input.jsonl"


# ----------------------------------------------------------------------------- valid files


def test_valid_file_counts_lines_and_tokens(input_path: Path) -> None:
    lines = [
        request_line("a"),
        request_line("b", url="/v1/chat/completions", body={"messages": [], "max_tokens": 5}),
        request_line("c", url="/v1/embeddings", body={"model": "e", "input": "x" * 40}),
    ]
    write_lines(input_path, lines)

    report = validate_batch_file(input_path)

    assert report.ok
    assert report.lines == 3
    assert report.problems == ()
    assert report.problem_count == 0
    assert report.estimated_tokens == sum(
        estimate_request_tokens(line["body"], path=line["url"]) for line in lines
    )
    assert report.path == str(input_path)
    assert "3 requests, no problems" in report.describe()


def test_blank_lines_are_ignored_but_counted_in_line_numbers(input_path: Path) -> None:
    write_lines(input_path, ["", request_line("a"), "   \t", "\r", request_line("a")])

    report = validate_batch_file(input_path)

    assert report.lines == 2
    assert report.problems == ((5, report.problems[0][1]),), (
        "the duplicate is reported on physical line 5"
    )
    assert "first used on line 2" in report.problems[0][1]


def test_empty_file_is_valid_with_no_lines(input_path: Path) -> None:
    input_path.write_bytes(b"\n\n")
    report = validate_batch_file(input_path)
    assert report.ok
    assert report.lines == 0


def test_utf8_bom_and_crlf_are_accepted(input_path: Path) -> None:
    input_path.write_bytes(
        b"\xef\xbb\xbf"
        + orjson.dumps(request_line("a"))
        + b"\r\n"
        + orjson.dumps(request_line("b"))
    )
    report = validate_batch_file(input_path)
    assert report.ok, report.describe()
    assert [line.custom_id for line in iter_batch_requests(input_path)] == ["a", "b"]


# ----------------------------------------------------------------------------- each problem

PROBLEMS = [
    pytest.param(b'{"custom_id": "\xff\xfe", "method": "POST"}', "invalid UTF-8", id="utf8"),
    pytest.param(b'{"custom_id": "x", "method": "POST"', "malformed JSON at column", id="json"),
    pytest.param(b"{", "on a single line", id="pretty-printed"),
    pytest.param(b"[1, 2]", "JSON array, not an object", id="array"),
    pytest.param(b'"text"', "JSON string, not an object", id="string"),
    pytest.param(b"42", "JSON number, not an object", id="number"),
    pytest.param(request_line(MISSING), 'missing "custom_id"', id="no-custom-id"),
    pytest.param(request_line(7), '"custom_id" must be a string, got number 7', id="int-id"),
    pytest.param(request_line(""), '"custom_id" is empty', id="empty-id"),
    pytest.param(request_line(method="GET"), 'only "POST" is supported', id="get"),
    pytest.param(request_line(method="post"), 'write exactly "POST"', id="lowercase-post"),
    pytest.param(request_line(method=MISSING), 'missing "method"', id="no-method"),
    pytest.param(
        request_line(url="/responses"), 'lacks the "/v1" prefix; use "/v1/responses"', id="no-v1"
    ),
    pytest.param(request_line(url="/v1/completions"), "is not supported; use one of", id="url"),
    pytest.param(
        request_line(url="https://api.openai.com/v1/responses"),
        'give the path only: "/v1/responses"',
        id="full",
    ),
    pytest.param(request_line(url="/v1/responses/"), "trailing slash", id="trailing-slash"),
    pytest.param(request_line(url=MISSING), 'missing "url"', id="no-url"),
    pytest.param(request_line(url=3), '"url" must be a string', id="int-url"),
    pytest.param(request_line(body=MISSING), 'missing "body"', id="no-body"),
    pytest.param(request_line(body=None), '"body" must be a JSON object', id="null-body"),
    pytest.param(request_line(body=["x"]), "got array", id="array-body"),
]


@pytest.mark.parametrize(("bad_line", "expected"), PROBLEMS)
def test_each_problem_is_reported_with_its_line_number(
    input_path: Path, bad_line: Any, expected: str
) -> None:
    write_lines(input_path, [request_line("ok-1"), "", bad_line, request_line("ok-2")])

    report = validate_batch_file(input_path)

    assert not report.ok
    assert report.lines == 3
    assert report.problem_count == 1, report.problems
    assert report.problems[0][0] == 3
    assert expected in report.problems[0][1]


def test_several_problems_on_one_line_each_count(input_path: Path) -> None:
    write_lines(input_path, [{"custom_id": 5, "method": "GET", "url": "/x", "body": 1}])
    report = validate_batch_file(input_path)
    assert report.problem_count == 4
    assert [number for number, _ in report.problems] == [1, 1, 1, 1]


def test_only_first_problems_are_kept_and_describe_counts_the_rest(input_path: Path) -> None:
    write_lines(input_path, ["not json"] * 25)

    report = validate_batch_file(input_path, max_reported=3)

    assert report.problem_count == 25
    assert [number for number, _ in report.problems] == [1, 2, 3]
    text = report.describe()
    assert text.startswith(f"{input_path}: 25 problems in 25 request lines:")
    assert "  line 1: malformed JSON" in text
    assert "... and 22 more problems" in text
    assert "HINT:" in text


def test_max_reported_zero_and_negative(input_path: Path) -> None:
    write_lines(input_path, ["nope"])
    report = validate_batch_file(input_path, max_reported=0)
    assert report.problems == ()
    assert report.problem_count == 1
    assert "... and 1 more problem\n" in report.describe()
    with pytest.raises(ConfigurationError, match="max_reported"):
        validate_batch_file(input_path, max_reported=-1)


# ----------------------------------------------------------------------------- duplicates


def test_duplicates_name_both_lines(input_path: Path) -> None:
    write_lines(
        input_path,
        [request_line(custom_id) for custom_id in ["a", "b", "a", "c", "b", "a"]],
    )

    report = validate_batch_file(input_path)

    assert report.problem_count == 3
    assert [(number, message.split(",")[0]) for number, message in report.problems] == [
        (3, 'duplicate custom_id "a"'),
        (5, 'duplicate custom_id "b"'),
        (6, 'duplicate custom_id "a"'),
    ]
    assert "first used on line 1" in report.problems[0][1]
    assert "first used on line 2" in report.problems[1][1]
    assert "first used on line 1" in report.problems[2][1]


def test_duplicates_merge_in_line_order_with_other_problems(input_path: Path) -> None:
    write_lines(input_path, [request_line("a"), "bad", request_line("a"), "bad"])
    report = validate_batch_file(input_path, max_reported=2)
    assert report.problem_count == 3
    assert [number for number, _ in report.problems] == [2, 3]


def test_invalid_lines_still_take_part_in_duplicate_detection(input_path: Path) -> None:
    write_lines(input_path, [request_line("a", method="GET"), request_line("a")])
    report = validate_batch_file(input_path)
    assert report.problem_count == 2
    assert "first used on line 1" in report.problems[1][1]


def test_forced_hash_collisions_are_not_duplicates(
    input_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every id hashes alike; only the exact-string second pass tells them apart."""
    monkeypatch.setattr(_batch_input, "SORT_CHUNK", 7)  # several runs to merge
    ids = [f"id-{n}" for n in range(40)]
    write_lines(input_path, [request_line(custom_id) for custom_id in [*ids, "id-3"]])

    report = validate_batch_file(input_path, hash_function=lambda text: 12345)

    assert report.problem_count == 1
    assert report.problems[0][0] == 41
    assert 'duplicate custom_id "id-3", first used on line 4' in report.problems[0][1]


def test_out_of_range_hash_values_are_folded(input_path: Path) -> None:
    write_lines(input_path, [request_line("a"), request_line("b"), request_line("a")])
    report = validate_batch_file(input_path, hash_function=lambda text: 2**70 + ord(text))
    assert report.problem_count == 1


def test_many_ids_without_duplicates_across_chunks(
    input_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batch_input, "SORT_CHUNK", 64)
    write_lines(input_path, [request_line(f"r{n}") for n in range(1000)])
    assert validate_batch_file(input_path).ok


@given(
    values=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=200),
    chunk_size=st.integers(min_value=1, max_value=50),
)
def test_iter_sorted_int64_sorts_in_chunks(values: list[int], chunk_size: int) -> None:
    assert list(iter_sorted_int64(array("q", values), chunk_size=chunk_size)) == sorted(values)


def test_iter_sorted_int64_rejects_bad_chunk_size() -> None:
    with pytest.raises(ConfigurationError, match="chunk_size"):
        iter_sorted_int64(array("q", [1]), chunk_size=0)


# ----------------------------------------------------------------------------- iteration


def test_iter_batch_requests_streams_lines(input_path: Path) -> None:
    write_lines(
        input_path,
        [
            request_line("a"),
            "",
            request_line("b", url="/v1/embeddings", body={"input": "x"}),
            request_line("c", body={"model": "own", "input": "y"}),
        ],
    )

    lines = list(iter_batch_requests(input_path, default_model="default-m"))

    assert lines == [
        BatchLine(1, "a", "/v1/responses", {"model": "m", "input": "hello there"}),
        BatchLine(3, "b", "/v1/embeddings", {"model": "default-m", "input": "x"}),
        BatchLine(4, "c", "/v1/responses", {"model": "own", "input": "y"}),
    ]
    assert lines[1].to_request() == Request(
        body={"model": "default-m", "input": "x"}, custom_id="b", path="/v1/embeddings"
    )


def test_iter_batch_requests_skips_done_ids(input_path: Path) -> None:
    write_lines(input_path, [request_line(f"r{n}") for n in range(6)])
    done = {"r0", "r1", "r4"}
    lines = iter_batch_requests(input_path, skip=done.__contains__)
    assert [line.custom_id for line in lines] == ["r2", "r3", "r5"]


def test_iter_batch_requests_without_default_model_keeps_body(input_path: Path) -> None:
    write_lines(input_path, [request_line("a", body={"input": "x"})])
    (line,) = iter_batch_requests(input_path)
    assert line.body == {"input": "x"}


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [("{oops", "malformed JSON"), (request_line("a", method="GET"), "POST")],
)
def test_iter_batch_requests_raises_on_invalid_line(
    input_path: Path, bad_line: Any, expected: str
) -> None:
    write_lines(input_path, [request_line("ok"), bad_line])
    lines = iter_batch_requests(input_path)
    assert next(lines).custom_id == "ok"
    with pytest.raises(InputError, match=expected) as caught:
        next(lines)
    assert caught.value.line == 2
    assert str(caught.value).startswith("line 2: ")


def test_iter_batch_requests_rejects_empty_default_model(input_path: Path) -> None:
    write_lines(input_path, [request_line("a")])
    with pytest.raises(ConfigurationError, match="default_model"):
        iter_batch_requests(input_path, default_model="")


def test_report_is_frozen() -> None:
    report = ValidationReport("x", 0, (), 0, 0)
    with pytest.raises(AttributeError):
        report.lines = 3  # type: ignore[misc]
