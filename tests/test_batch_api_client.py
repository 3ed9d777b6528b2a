"""The low-level Batch API client against the fake server over loopback."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from ratelane._core.errors import APIError, TransportError
from ratelane._http.batch_api import BatchAPI, BatchInfo, RequestCounts
from ratelane._http.transport import Transport
from ratelane.testing import BatchOptions, FakeOpenAI

KEY = "sk-batch-client-0123456789"


def write_input(path: Path, count: int, *, pad: int = 0) -> Path:
    with path.open("wb") as out:
        for i in range(count):
            body = {"model": "gpt-4.1-mini", "input": f"q{i} " + "x" * pad}
            row = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": body}
            out.write(orjson.dumps(row) + b"\n")
    return path


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY, batches=BatchOptions(time_scale=0.02)) as running:
        yield running


@pytest.fixture
async def api(server: FakeOpenAI) -> AsyncIterator[BatchAPI]:
    async with Transport(base_url=server.base_url, api_key=KEY, timeout_s=10) as transport:
        yield BatchAPI(transport)


async def finish(api: BatchAPI, batch_id: str) -> BatchInfo:
    async with asyncio.timeout(4):
        while not (info := await api.retrieve_batch(batch_id)).is_terminal:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return info


async def test_upload_create_poll_download(
    server: FakeOpenAI, api: BatchAPI, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "chunk-1.jsonl", 30)
    file_id = await api.upload_file(source)
    assert file_id.startswith("file-")
    [upload] = server.batches.uploads
    assert (upload.file_id, upload.filename, upload.bytes) == (
        file_id,
        "chunk-1.jsonl",
        source.stat().st_size,
    )

    created = await api.create_batch(file_id, "/v1/responses", metadata={"chunk": "1"})
    assert created.status == "validating"
    assert not created.is_terminal
    assert created.input_file_id == file_id
    assert created.endpoint == "/v1/responses"
    assert created.metadata == {"chunk": "1"}
    assert isinstance(created.created_at, int)

    done = await finish(api, created.id)
    assert done.status == "completed"
    assert done.request_counts == RequestCounts(30, 30, 0)
    assert done.error_file_id is None
    assert done.output_file_id is not None
    assert done.model == "gpt-4.1-mini"

    dest = tmp_path / "out" / "batch-1.jsonl"
    dest.parent.mkdir()
    size = await api.download_file(done.output_file_id, dest)
    assert size == dest.stat().st_size > 0
    assert not dest.with_name("batch-1.jsonl.part").exists()
    rows = [orjson.loads(raw) for raw in dest.read_bytes().splitlines()]
    assert sorted(row["custom_id"] for row in rows) == sorted(f"r{i}" for i in range(30))

    await api.delete_file(file_id)
    with pytest.raises(APIError) as caught:
        await api.download_file(file_id, tmp_path / "gone.jsonl")
    assert caught.value.status_code == 404
    assert not (tmp_path / "gone.jsonl").exists()
    assert not (tmp_path / "gone.jsonl.part").exists()


async def test_upload_under_another_name_then_list_files_page_by_page(
    api: BatchAPI, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "chunk-1.jsonl", 2)
    ids = [await api.upload_file(source, filename=f"run-{n}.jsonl") for n in range(3)]
    first = await api.list_files(purpose="batch", limit=2)
    assert [(f.id, f.filename, f.bytes, f.purpose) for f in first.files] == [
        (ids[n], f"run-{n}.jsonl", source.stat().st_size, "batch") for n in (2, 1)
    ]
    assert first.has_more and first.last_id == ids[1]
    rest = await api.list_files(purpose="batch", limit=2, after=first.last_id)
    assert ([f.id for f in rest.files], rest.has_more) == ([ids[0]], False)
    oldest = await api.list_files(order="asc", limit=1)
    assert [f.id for f in oldest.files] == [ids[0]]
    assert isinstance(oldest.files[0].created_at, int)
    assert (await api.list_files(purpose="fine-tune")).files == ()
    with pytest.raises(APIError) as caught:
        await api.list_files(limit=0)
    assert (caught.value.status_code, caught.value.param) == (400, "limit")


async def test_validation_errors_are_parsed(api: BatchAPI, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
                       b'"body": {"model": "m", "messages": []}}\nnot json\n')  # fmt: skip
    created = await api.create_batch(await api.upload_file(source), "/v1/responses")
    done = await finish(api, created.id)
    assert done.status == "failed"
    assert [(e.code, e.line, e.param) for e in done.errors] == [
        ("url_mismatch", 1, "url"),
        ("invalid_json_line", 2, None),
    ]
    assert isinstance(done.failed_at, int)


async def test_cancel(server: FakeOpenAI, tmp_path: Path) -> None:
    slow = BatchOptions(validating_s=0.01, in_progress_s=60, cancelling_s=0.01)
    async with (
        FakeOpenAI(api_key=KEY, batches=slow) as slow_server,
        Transport(base_url=slow_server.base_url, api_key=KEY) as transport,
    ):
        api = BatchAPI(transport)
        file_id = await api.upload_file(write_input(tmp_path / "in.jsonl", 40))
        created = await api.create_batch(file_id, "/v1/responses")
        cancelling = await api.cancel_batch(created.id)
        assert cancelling.status == "cancelling"
        done = await finish(api, created.id)
        assert done.status == "cancelled"
        assert isinstance(done.cancelled_at, int)
        with pytest.raises(APIError) as caught:
            await api.cancel_batch(created.id)
        assert caught.value.status_code == 400


async def test_errors_carry_status_code_and_request_id_never_the_key(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    wrong_key = "sk-wrong-key-abcdefghijklmnop"
    async with Transport(base_url=server.base_url, api_key=wrong_key) as transport:
        api = BatchAPI(transport)
        with pytest.raises(APIError) as caught:
            await api.retrieve_batch("batch_x")
        assert wrong_key not in repr(api)
    error = caught.value
    assert (error.status_code, error.code) == (401, "invalid_api_key")
    assert error.request_id is not None
    assert error.request_id.startswith("req_")
    assert wrong_key not in str(error)
    assert "retrieve of batch_x failed" in str(error)

    async with Transport(base_url=server.base_url, api_key=KEY) as transport:
        api = BatchAPI(transport)
        with pytest.raises(APIError) as caught:
            await api.upload_file(write_input(tmp_path / "in.txt", 1))
        assert (caught.value.status_code, caught.value.param) == (400, "file")
        with pytest.raises(APIError) as caught:
            await api.retrieve_batch("batch_nope")
        assert caught.value.status_code == 404


async def test_connection_refused_is_a_transport_error(tmp_path: Path) -> None:
    async with FakeOpenAI(api_key=KEY) as gone:
        url = gone.base_url
    async with Transport(base_url=url, api_key=KEY) as transport:
        api = BatchAPI(transport)
        with pytest.raises(TransportError, match="cannot connect"):
            await api.retrieve_batch("batch_x")
        with pytest.raises(TransportError):
            await api.download_file("file-x", tmp_path / "x.jsonl")
        with pytest.raises(TransportError):
            await api.upload_file(write_input(tmp_path / "in.jsonl", 1))


def test_batch_info_tolerates_missing_and_unknown_fields() -> None:
    info = BatchInfo.from_wire({"id": "batch_1", "status": "in_progress", "new_field": 1})
    assert info == BatchInfo("batch_1", "in_progress")
    assert info.request_counts == RequestCounts()
    with pytest.raises(TransportError):
        BatchInfo.from_wire({"status": "completed"})


async def test_upload_and_download_stream_through_disk(
    server: FakeOpenAI, api: BatchAPI, tmp_path: Path
) -> None:
    """A ~12 MB file goes up and comes back without either side holding it in memory."""
    source = write_input(tmp_path / "big.jsonl", 6_000, pad=2_000)
    size = source.stat().st_size
    assert size > 12_000_000
    tracemalloc.start()
    try:
        file_id = await api.upload_file(source)
        copy = tmp_path / "copy.jsonl"
        assert await api.download_file(file_id, copy) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copy.read_bytes() == source.read_bytes()
    assert peak < size / 4, f"peak {peak:,} bytes for a {size:,}-byte file"
