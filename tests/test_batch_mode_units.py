"""Batch API mode's logic without a server: options, poll backoff, chunking, sidecar, merge."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from ratelane._core.config import Price
from ratelane._core.errors import APIError, ConfigurationError, TransportError
from ratelane._core.models import RunStats
from ratelane._files.batch_merge import Merger
from ratelane._files.batch_mode import BatchMode, _Fatal
from ratelane._files.batch_options import BatchRunOptions, poll_delay
from ratelane._files.batch_plan import ChunkLimits, embedding_inputs, plan_chunks
from ratelane._files.batch_state import BatchState, Chunk, LineRanges, sidecar_path
from ratelane._files.batch_uploads import find_uploads
from ratelane._files.checkpoint import DoneSet, ResultWriter
from ratelane._files.file_run import FileRun, FileRunOptions
from ratelane._files.input import BatchLine, ValidationReport
from ratelane._http.batch_api import FileInfo, FilePage

# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("completion_window", "1h", "24h only"),
        ("poll_interval_s", 0, "positive number of seconds"),
        ("max_batch_lines", 50_001, "1 to 50,000"),
        ("max_batch_bytes", 0, "1 to 200,000,000"),
        ("max_enqueued_tokens", 0, "positive whole number"),
        ("fallback", "retry", '"batch" or "realtime"'),
    ],
)
def test_options_refuse_what_cannot_work(field: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        BatchRunOptions(**{field: value})


def test_poll_cap_is_sixteen_floors_within_bounds() -> None:
    assert BatchRunOptions(poll_interval_s=0.5).max_poll_wait_s == 8.0
    assert BatchRunOptions(poll_interval_s=60).max_poll_wait_s == 300.0
    assert BatchRunOptions(poll_interval_s=600).max_poll_wait_s == 600.0


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("quiet", "low", "high"),
    [
        (0, 10.0, 10.0),  # never under the floor, even jittered down
        (1, 15.0, 20.0),
        (2, 30.0, 40.0),
        (3, 60.0, 80.0),
        (5, 75.0, 100.0),  # capped at 100, then jittered down by up to a quarter
        (500, 75.0, 100.0),  # no overflow
    ],
)
def test_poll_delay_doubles_while_quiet_up_to_the_cap(quiet: int, low: float, high: float) -> None:
    rng = random.Random(quiet)
    for _ in range(50):
        assert low <= poll_delay(quiet, floor_s=10.0, cap_s=100.0, rng=rng) <= high


def test_poll_delay_is_jittered() -> None:
    rng = random.Random(1)
    assert len({poll_delay(4, floor_s=1.0, cap_s=100.0, rng=rng) for _ in range(20)}) > 10


# --------------------------------------------------------------------------- line ranges


def test_line_ranges_map_chunk_lines_to_input_lines() -> None:
    ranges = LineRanges()
    for number in (3, 4, 5, 9, 10, 20):
        ranges.add(number)
    assert ranges.ranges == [[3, 5], [9, 10], [20, 20]]
    assert len(ranges) == 6
    assert [ranges.line(k) for k in range(8)] == [None, 3, 4, 5, 9, 10, 20, None]
    assert list(ranges) == [3, 4, 5, 9, 10, 20]


# --------------------------------------------------------------------------- chunking


def lines(specs: list[tuple[str, str | None, str]]) -> list[BatchLine]:
    out = []
    for number, (url, model, text) in enumerate(specs, 1):
        body: dict[str, Any] = {"input": text}
        if model is not None:
            body["model"] = model
        out.append(BatchLine(number, f"c{number}", url, body))
    return out


def keys() -> Any:
    counter = iter(range(1, 1000))
    return lambda: next(counter)


def test_chunks_group_by_url_and_model_and_cut_at_the_line_cap(tmp_path: Path) -> None:
    specs = [
        ("/v1/responses", "a", "x"),
        ("/v1/embeddings", "a", "x"),
        ("/v1/responses", "b", "x"),
        ("/v1/responses", "a", "x"),
        ("/v1/responses", None, "x"),
        ("/v1/responses", "a", "x"),
    ]
    chunks = plan_chunks(lines(specs), tmp_path, ChunkLimits(2, 10**6), new_key=keys())
    assert [(c.url, c.model, c.ranges) for c in chunks] == [
        ("/v1/responses", "a", [[1, 1], [4, 4]]),
        ("/v1/embeddings", "a", [[2, 2]]),
        ("/v1/responses", "b", [[3, 3]]),
        ("/v1/responses", None, [[5, 5]]),
        ("/v1/responses", "a", [[6, 6]]),
    ]
    first = (tmp_path / chunks[0].name).read_bytes().splitlines()
    body = {"input": "x", "model": "a"}
    assert [orjson.loads(raw) for raw in first] == [
        {"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body}
        for cid in ("c1", "c4")
    ]
    assert chunks[0].bytes == (tmp_path / chunks[0].name).stat().st_size


def test_chunks_cut_at_the_byte_and_token_caps(tmp_path: Path) -> None:
    specs = [("/v1/responses", "m", "x" * 400)] * 5  # 100 estimated tokens each
    size = len(orjson.dumps({"custom_id": "c1", "method": "POST", "url": "/v1/responses",
                             "body": {"input": "x" * 400, "model": "m"}})) + 1  # fmt: skip
    by_bytes = plan_chunks(
        lines(specs), tmp_path / "b", ChunkLimits(100, 2 * size + 5), new_key=keys()
    )
    assert [c.lines for c in by_bytes] == [2, 2, 1]
    assert all(c.bytes <= 2 * size + 5 for c in by_bytes)
    by_tokens = plan_chunks(
        lines(specs), tmp_path / "t", ChunkLimits(100, 10**6, 300), new_key=keys()
    )
    assert [(c.lines, c.tokens) for c in by_tokens] == [(3, 300), (2, 200)]
    # A line over a cap alone still gets a chunk (the service then says what is wrong).
    alone = plan_chunks(lines(specs[:2]), tmp_path / "a", ChunkLimits(100, 10), new_key=keys())
    assert [c.lines for c in alone] == [1, 1]


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("one text", 1),
        (["a", "b", "c"], 3),
        ([[1, 2], [3], [4, 5, 6]], 3),  # token arrays: one input each
        ([101, 102, 103], 1),  # one tokenized input
        ([], 1),  # invalid; the service says so, counted as one
        (None, 1),
    ],
)
def test_embedding_inputs_count_each_array_element(value: Any, inputs: int) -> None:
    body = {"model": "e"} if value is None else {"model": "e", "input": value}
    assert embedding_inputs(body) == inputs


def test_embeddings_chunks_cut_at_50000_inputs_summed_over_lines(tmp_path: Path) -> None:
    texts = [str(n) for n in range(2048)]  # the most one request may hold
    body = {"model": "e", "input": texts}
    rows = [BatchLine(n, f"e{n}", "/v1/embeddings", body) for n in range(1, 27)]  # 53,248 inputs
    chunks = plan_chunks(rows, tmp_path / "e", ChunkLimits(50_000, 10**9), new_key=keys())
    assert [(c.lines, c.inputs) for c in chunks] == [(24, 49_152), (2, 4_096)]
    # Other endpoints are not counted; a lower cap cuts sooner.
    same = [BatchLine(n, f"r{n}", "/v1/responses", row.body) for n, row in enumerate(rows, 1)]
    [whole] = plan_chunks(same, tmp_path / "r", ChunkLimits(50_000, 10**9), new_key=keys())
    assert (whole.lines, whole.inputs) == (26, 0)
    small = plan_chunks(
        lines([("/v1/embeddings", "e", "x")] * 5), tmp_path / "s",
        ChunkLimits(100, 10**6, max_inputs=2), new_key=keys(),
    )  # fmt: skip
    assert [c.inputs for c in small] == [2, 2, 1]


# --------------------------------------------------------------------------- sidecar


def test_sidecar_round_trips_and_refuses_another_input_with_unfinished_batches(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.jsonl"
    state = BatchState.open(output, tmp_path / "in.jsonl")
    chunk = Chunk(key=state.new_key(), url="/v1/responses", model="m", lines=3, bytes=9,
                  tokens=4, ranges=[[1, 2], [5, 5]], file_id="file-1")  # fmt: skip
    state.chunks.append(chunk)
    state.save()
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed over
    loaded = BatchState.open(output, tmp_path / "in.jsonl")
    assert loaded.chunks == [chunk] and loaded.next_key == 2
    assert loaded.chunks[0].input_line(3) == 5
    with pytest.raises(ConfigurationError, match="unfinished batches of another INPUT"):
        BatchState.open(output, tmp_path / "other.jsonl")
    loaded.chunks[0].status = "merged"
    loaded.save()
    assert BatchState.open(output, tmp_path / "other.jsonl").input.endswith("other.jsonl")


def test_an_unreadable_sidecar_is_an_error_with_a_hint(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sidecar_path(output).write_text("{not json")
    with pytest.raises(ConfigurationError, match="HINT: if those batches are no longer wanted"):
        BatchState.load(output)


def test_the_run_token_is_kept_and_names_uploads(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    state = BatchState.open(output, tmp_path / "in.jsonl")
    assert len(state.token) == 12 and not state.token_saved
    chunk = Chunk(key=7, url="/v1/responses", model="m", lines=1, bytes=9, tokens=1, ranges=[])
    assert state.upload_name(chunk) == f"ratelane-{state.token}-chunk-00007.jsonl"
    state.save()
    loaded = BatchState.open(output, tmp_path / "in.jsonl")
    assert (loaded.token, loaded.token_saved) == (state.token, True)
    # A sidecar from before run tokens: a new token, not on disk until the next save.
    data = orjson.loads(sidecar_path(output).read_bytes())
    del data["token"]
    sidecar_path(output).write_bytes(orjson.dumps(data))
    older = BatchState.open(output, tmp_path / "in.jsonl")
    assert older.token != state.token and not older.token_saved


# --------------------------------------------------------------------------- lost uploads


def listing(*files: tuple[str, str, int, int]) -> list[FileInfo]:
    """``(id, filename, bytes, created_at)`` rows, newest first."""
    return [FileInfo(id=i, filename=name, bytes=size, created_at=at) for i, name, size, at in files]


ONE_DAY = 24 * 3600.0


@pytest.mark.parametrize(
    ("pages", "wanted", "not_before", "found", "pages_read"),
    [
        # Name and size must both match; the newest of two copies wins.
        (
            [
                listing(
                    ("f3", "a.jsonl", 10, 900),
                    ("f2", "a.jsonl", 10, 800),
                    ("f1", "b.jsonl", 5, 700),
                )
            ],
            {"a.jsonl": 10, "b.jsonl": 6},
            None,
            {"a.jsonl": "f3"},
            1,
        ),
        # Found on the second page (the first page's last id is the cursor).
        (
            [listing(("f4", "x.jsonl", 1, 900)), listing(("f3", "a.jsonl", 10, 800))],
            {"a.jsonl": 10},
            None,
            {"a.jsonl": "f3"},
            2,
        ),
        # Everything found: no further page is read.
        (
            [listing(("f4", "a.jsonl", 10, 900)), listing(("f3", "b.jsonl", 1, 800))],
            {"a.jsonl": 10},
            None,
            {"a.jsonl": "f4"},
            1,
        ),
        # A page reaching files older than the chunks (minus clock skew) ends the search.
        (
            [listing(("f4", "x.jsonl", 1, int(10 * ONE_DAY))), listing(("f3", "a.jsonl", 10, 0))],
            {"a.jsonl": 10},
            11 * ONE_DAY,
            {},
            1,
        ),
        # ... but files within the clock-skew margin are still looked at.
        (
            [
                listing(("f4", "x.jsonl", 1, int(11 * ONE_DAY) - 60)),
                listing(("f3", "a.jsonl", 10, 0)),
            ],
            {"a.jsonl": 10},
            11 * ONE_DAY,
            {"a.jsonl": "f3"},
            2,
        ),
        # Nothing wanted: nothing asked.
        ([listing(("f1", "a.jsonl", 10, 900))], {}, None, {}, 0),
    ],
)
async def test_find_uploads_matches_name_and_size_newest_first_and_stops_early(
    pages: list[list[FileInfo]],
    wanted: dict[str, int],
    not_before: float | None,
    found: dict[str, str],
    pages_read: int,
) -> None:
    cursors: list[str | None] = []

    async def list_page(after: str | None) -> FilePage:
        cursors.append(after)
        index = len(cursors) - 1
        return FilePage(tuple(pages[index]), has_more=index + 1 < len(pages))

    result = await find_uploads(list_page, wanted, not_before=not_before)
    assert {name: info.id for name, info in result.items()} == found
    assert len(cursors) == pages_read
    assert cursors == [None, *(page[-1].id for page in pages)][:pages_read]


async def test_find_uploads_reads_at_most_max_pages() -> None:
    calls = 0

    async def endless(after: str | None) -> FilePage:
        nonlocal calls
        calls += 1
        return FilePage((FileInfo(id=f"f{calls}", filename="x.jsonl", bytes=1),), has_more=True)

    assert await find_uploads(endless, {"a.jsonl": 1}, max_pages=3) == {}
    assert calls == 3


# --------------------------------------------------------------------------- merge


def result_line(custom_id: str, status: int | None, code: str | None = None) -> bytes:
    response = None
    if status is not None:
        body: Any = {"id": "resp_1", "usage": {"input_tokens": 1000, "output_tokens": 2000}}
        if status >= 400:
            body = {"error": {"message": "bad", "type": "invalid_request_error", "code": "bad_x"}}
        response = {"status_code": status, "request_id": "req_1", "body": body}
    error = None if code is None else {"code": code, "message": "not run"}
    line = {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": error}
    return orjson.dumps(line) + b"\n"


def test_merge_writes_successes_once_failures_to_errors_and_leaves_unrun_lines(
    tmp_path: Path,
) -> None:
    output, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    output.write_bytes(result_line("already", 200))
    stats = RunStats()
    with ResultWriter(output, errors) as writer:
        merger = Merger(
            writer,
            stats,
            done=DoneSet.from_output(output).__contains__,
            price_of=lambda model: Price(input_per_million=1.0, output_per_million=2.0),
        )
        results = tmp_path / "results.jsonl"
        results.write_bytes(
            result_line("already", 200)
            + result_line("new", 200)
            + result_line("new", 200)
            + result_line("bad", 400)
            + b"\n"
            + result_line("late", None, "batch_expired")
        )
        counts = merger.merge(results, url="/v1/responses", model="m")
    assert (counts.delivered, counts.failed, counts.left, counts.duplicates) == (1, 1, 1, 2)
    written = [orjson.loads(raw) for raw in output.read_bytes().splitlines()]
    assert [line["custom_id"] for line in written] == ["already", "new"]
    assert written[1]["response"]["body"]["id"] == "resp_1"
    [failure] = [orjson.loads(raw) for raw in errors.read_bytes().splitlines()]
    assert failure["custom_id"] == "bad"
    assert failure["error"] == {"code": "bad_x", "message": "bad"}
    assert failure["response"]["status_code"] == 400
    assert merger.settled("bad") and merger.settled("new") and merger.settled("already")
    assert not merger.settled("late")
    assert (stats.succeeded, stats.failed, stats.input_tokens) == (1, 1, 1000)
    assert stats.cost_usd == pytest.approx(1000 * 1e-6 + 2000 * 2e-6)


# --------------------------------------------------------------------------- server calls


async def test_calls_retry_answers_that_may_change_and_stop_on_the_others(tmp_path: Path) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    options = FileRunOptions(
        api_key="sk-units-0001", via="batch", batch=BatchRunOptions(poll_interval_s=1.0)
    )
    file_run = FileRun(tmp_path / "in.jsonl", tmp_path / "out.jsonl", options=options)
    report = ValidationReport(str(tmp_path / "in.jsonl"), 1, (), 0, 0)
    with ResultWriter(tmp_path / "out.jsonl", tmp_path / "err.jsonl") as writer:
        mode = BatchMode(file_run, writer, report, sleep=sleep, rng=random.Random(3))
        answers: list[Any] = [APIError("busy", status_code=503), TransportError("reset"), "ok"]

        async def call() -> Any:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        assert await mode._call("retrieve of batch_1", call) == "ok"
        assert len(waits) == 2 and waits[0] == 1.0 and 1.5 <= waits[1] <= 2.0  # backing off

        async def refused() -> Any:
            raise APIError("bad key", status_code=401, code="invalid_api_key")

        with pytest.raises(_Fatal) as stop:
            await mode._call("upload of chunk-00001.jsonl", refused)
        assert (stop.value.reason, stop.value.status) == ("invalid_api_key", 401)
        assert len(waits) == 2  # no wait before a fatal answer
