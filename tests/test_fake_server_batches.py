"""The fake server's Batch API over real sockets: files, batches, statuses, result files."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest

from ratelane.testing import BatchOptions, FakeOpenAI

KEY = "sk-batch-test-0123456789"
FAST = BatchOptions(time_scale=0.02)
MODEL = "gpt-4.1-mini"


def line(custom_id: str, *, url: str = "/v1/responses", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": MODEL, "input": f"hello {custom_id}", **body},
    }


def jsonl(lines: Iterable[Any]) -> bytes:
    return b"".join(
        (item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in lines
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        yield http


async def call(
    session: aiohttp.ClientSession, server: FakeOpenAI, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, server.base_url + path, json=body) as response:
        return response.status, orjson.loads(await response.read())


async def upload(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    content: bytes,
    *,
    filename: str = "input.jsonl",
    purpose: str | None = "batch",
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    if purpose is not None:
        form.add_field("purpose", purpose)
    form.add_field("file", content, filename=filename, content_type="application/jsonl")
    async with session.post(server.base_url + "/files", data=form) as response:
        return response.status, orjson.loads(await response.read())


async def content(session: aiohttp.ClientSession, server: FakeOpenAI, file_id: str) -> list[Any]:
    async with session.get(f"{server.base_url}/files/{file_id}/content") as response:
        assert response.status == 200
        return [orjson.loads(raw) for raw in (await response.read()).splitlines() if raw]


async def start(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    lines: Iterable[Any],
    endpoint: str = "/v1/responses",
) -> dict[str, Any]:
    status, file = await upload(session, server, jsonl(lines))
    assert status == 200, file
    body = {"input_file_id": file["id"], "endpoint": endpoint, "completion_window": "24h"}
    status, batch = await call(session, server, "POST", "/batches", body)
    assert status == 200, batch
    assert batch["status"] == "validating"
    return dict(batch)


async def wait(
    session: aiohttp.ClientSession, server: FakeOpenAI, batch_id: str, *, until: str = "terminal"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll until a terminal status (or ``until``); return the last object and all seen."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(4):
        while True:
            status, batch = await call(session, server, "GET", f"/batches/{batch_id}")
            assert status == 200
            seen.append(batch)
            if batch["status"] == until or (
                until == "terminal"
                and batch["status"] in ("completed", "failed", "expired", "cancelled")
            ):
                return batch, seen
            await asyncio.sleep(0.005)


def history(server: FakeOpenAI, batch_id: str) -> list[str]:
    """Every status the batch took, as the server recorded it (polls may miss short ones)."""
    batch = server.batches.get(batch_id)
    assert batch is not None
    return batch.history


async def test_batch_runs_through_every_status_with_moving_counts(
    session: aiohttp.ClientSession,
) -> None:
    lines = [line(f"r{i}") for i in range(40)]
    lines.append(line("bad", temperature=5))  # answered 400 by the real-time checks
    # A second of answering in ~20 steps: polls see the counts move, even under load.
    options = BatchOptions(validating_s=0.01, in_progress_s=1.0, finalizing_s=0.01)
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, lines)
        final, seen = await wait(session, server, batch["id"])
        assert history(server, batch["id"]) == [
            "validating",
            "in_progress",
            "finalizing",
            "completed",
        ]
        done = [b["request_counts"]["completed"] for b in seen if b["status"] == "in_progress"]
        assert done == sorted(done)
        assert any(0 < count < 40 for count in done)  # the counts moved while the batch ran
        assert final["request_counts"] == {"total": 41, "completed": 40, "failed": 1}
        assert final["model"] == MODEL
        for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
            assert isinstance(final[stamp], int)
        assert final["expires_at"] == final["created_at"] + 24 * 3600
        assert final["usage"]["output_tokens"] > 0

        output = await content(session, server, final["output_file_id"])
        errors = await content(session, server, final["error_file_id"])
        ids = [row["custom_id"] for row in output]
        assert sorted(ids) == sorted(f"r{i}" for i in range(40))
        assert ids != [f"r{i}" for i in range(40)]  # shuffled, as the real service does
        first = output[0]
        assert first["id"].startswith("batch_req_")
        assert first["error"] is None
        assert first["response"]["status_code"] == 200
        assert first["response"]["request_id"].startswith("req_")
        body = first["response"]["body"]
        assert body["output"][0]["content"][0]["text"] == f"Echo: hello {first['custom_id']}"
        # The same handler as the real-time endpoint: the same keys.
        status, realtime = await call(
            session, server, "POST", "/responses", {"model": MODEL, "input": "x"}
        )
        assert status == 200
        assert set(body) == set(realtime)

        [error] = errors
        assert error["custom_id"] == "bad"
        assert error["error"] is None
        assert error["response"]["status_code"] == 400
        assert error["response"]["body"]["error"]["param"] == "temperature"


async def test_chat_and_embeddings_batches(session: aiohttp.ClientSession) -> None:
    chat = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(3)
    ]
    embed = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "hi"},
        }
        for i in range(3)
    ]
    async with FakeOpenAI(api_key=KEY, batches=FAST) as server:
        first = await start(session, server, chat, "/v1/chat/completions")
        second = await start(session, server, embed, "/v1/embeddings")
        done_chat, _ = await wait(session, server, first["id"])
        done_embed, _ = await wait(session, server, second["id"])
        assert done_chat["error_file_id"] is None
        chat_rows = await content(session, server, done_chat["output_file_id"])
        assert {row["response"]["body"]["object"] for row in chat_rows} == {"chat.completion"}
        embed_rows = await content(session, server, done_embed["output_file_id"])
        assert {row["response"]["body"]["object"] for row in embed_rows} == {"list"}


async def test_all_lines_failing_still_completes_without_an_output_file(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY, batches=FAST, models=["other"]) as server:
        batch = await start(session, server, [line("a"), line("b")])
        final, _ = await wait(session, server, batch["id"])
        assert final["status"] == "completed"
        assert final["output_file_id"] is None
        assert final["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
        rows = await content(session, server, final["error_file_id"])
        assert {row["response"]["status_code"] for row in rows} == {404}


async def test_validation_failures_carry_line_numbers(session: aiohttp.ClientSession) -> None:
    lines = [
        line("a"),
        b'{"custom_id": "b", "method": ',
        b"",  # blank lines are skipped but still counted
        line("c", url="/v1/chat/completions"),
        {**line("d"), "body": {"model": "gpt-4o", "input": "x"}},
        line("a"),
        {**line("e"), "method": "GET"},
        {"custom_id": "f", "method": "POST", "url": "/v1/responses"},
        line("g"),
    ]
    async with FakeOpenAI(api_key=KEY, batches=FAST) as server:
        batch = await start(session, server, lines)
        final, _ = await wait(session, server, batch["id"])
        assert history(server, batch["id"]) == ["validating", "failed"]
        assert isinstance(final["failed_at"], int)
        assert final["output_file_id"] is None
        assert final["error_file_id"] is None
        found = [(e["line"], e["code"]) for e in final["errors"]["data"]]
        assert found == [
            (2, "invalid_json_line"),
            (4, "url_mismatch"),
            (5, "model_mismatch"),
            (6, "duplicate_custom_id"),
            (7, "invalid_method"),
            (8, "missing_required_parameter"),
        ]
        assert final["errors"]["data"][0]["message"] == "This line is not parseable as valid JSON."
        assert final["errors"]["object"] == "list"


@pytest.mark.parametrize(
    ("options", "lines", "code"),
    [
        (
            BatchOptions(time_scale=0.02, max_lines=3),
            [line(f"r{i}") for i in range(4)],
            "too_many_tasks",
        ),
        (
            BatchOptions(time_scale=0.02, max_bytes=99),
            [line(f"r{i}") for i in range(4)],
            "file_too_large",
        ),
        (FAST, [b""], "empty_file"),
    ],
)
async def test_file_level_limits(
    session: aiohttp.ClientSession, options: BatchOptions, lines: list[Any], code: str
) -> None:
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, lines)
        final, _ = await wait(session, server, batch["id"])
        assert final["status"] == "failed"
        assert [e["code"] for e in final["errors"]["data"]] == [code]


async def test_expiry_after_n_lines_turns_the_rest_into_batch_expired_lines(
    session: aiohttp.ClientSession,
) -> None:
    options = BatchOptions(time_scale=0.02, expire_after_lines=3)
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, [line(f"r{i}") for i in range(10)])
        final, _ = await wait(session, server, batch["id"])
        assert history(server, batch["id"]) == ["validating", "in_progress", "expired"]
        assert final["request_counts"] == {"total": 10, "completed": 3, "failed": 7}
        assert isinstance(final["expired_at"], int)
        output = await content(session, server, final["output_file_id"])
        errors = await content(session, server, final["error_file_id"])
        assert len(output) == 3
        assert {row["custom_id"] for row in output + errors} == {f"r{i}" for i in range(10)}
        assert {row["error"]["code"] for row in errors} == {"batch_expired"}
        assert all(row["response"] is None for row in errors)


async def test_forced_expiry_through_the_admin_endpoint(session: aiohttp.ClientSession) -> None:
    options = BatchOptions(validating_s=0.01, in_progress_s=60)
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, [line(f"r{i}") for i in range(40)])
        await wait(session, server, batch["id"], until="in_progress")
        async with session.post(f"{server.url}/_fake/batches/{batch['id']}/expire") as response:
            assert response.status == 200
        final, _ = await wait(session, server, batch["id"])
        assert final["status"] == "expired"
        counts = final["request_counts"]
        assert counts["total"] == 40
        assert 0 < counts["failed"] == 40 - counts["completed"]
        async with session.post(f"{server.url}/_fake/batches/batch_nope/expire") as response:
            assert response.status == 404


async def test_cancel_goes_through_cancelling_to_cancelled(
    session: aiohttp.ClientSession,
) -> None:
    options = BatchOptions(validating_s=0.01, in_progress_s=60, cancelling_s=0.05)
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, [line(f"r{i}") for i in range(40)])
        await wait(session, server, batch["id"], until="in_progress")
        status, cancelling = await call(session, server, "POST", f"/batches/{batch['id']}/cancel")
        assert status == 200
        assert cancelling["status"] == "cancelling"
        assert isinstance(cancelling["cancelling_at"], int)
        final, _ = await wait(session, server, batch["id"])
        assert history(server, batch["id"]) == [
            "validating",
            "in_progress",
            "cancelling",
            "cancelled",
        ]
        assert isinstance(final["cancelled_at"], int)
        errors = await content(session, server, final["error_file_id"])
        assert {row["error"]["code"] for row in errors} == {"batch_cancelled"}
        assert final["request_counts"]["failed"] == len(errors)
        status, body = await call(session, server, "POST", f"/batches/{batch['id']}/cancel")
        assert status == 400
        assert "cancelled" in body["error"]["message"]


async def test_cancel_while_validating(session: aiohttp.ClientSession) -> None:
    options = BatchOptions(validating_s=0.2, cancelling_s=0.01)
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, [line("a")])
        status, cancelling = await call(session, server, "POST", f"/batches/{batch['id']}/cancel")
        assert (status, cancelling["status"]) == (200, "cancelling")
        final, _ = await wait(session, server, batch["id"])
        assert final["status"] == "cancelled"
        assert final["output_file_id"] is None


async def test_enqueued_token_limit_fails_a_batch_until_earlier_ones_finish(
    session: aiohttp.ClientSession,
) -> None:
    lines = [line(f"r{i}") for i in range(20)]
    options = BatchOptions(validating_s=0.01, in_progress_s=0.4, finalizing_s=0.01)
    async with FakeOpenAI(api_key=KEY, batches=options) as probe:
        first = await start(session, probe, lines)
        await wait(session, probe, first["id"], until="in_progress")
        tokens = probe.batches.enqueued_tokens(MODEL)
    assert tokens > 0
    limited = BatchOptions(
        validating_s=0.01,
        in_progress_s=0.4,
        finalizing_s=0.01,
        enqueued_token_limit={MODEL: tokens},
    )
    async with FakeOpenAI(api_key=KEY, batches=limited, organization="org-x") as server:
        first = await start(session, server, lines)
        await wait(session, server, first["id"], until="in_progress")
        second = await start(session, server, [line(f"s{i}") for i in range(20)])
        refused, _ = await wait(session, server, second["id"])
        assert refused["status"] == "failed"
        [error] = refused["errors"]["data"]
        assert error["code"] == "token_limit_exceeded"
        assert error["message"].startswith(
            f"Enqueued token limit reached for {MODEL} in organization org-x. "
            f"Limit: {tokens:,} enqueued tokens."
        )
        done, _ = await wait(session, server, first["id"])
        assert done["status"] == "completed"
        third = await start(session, server, [line(f"s{i}") for i in range(20)])
        accepted, _ = await wait(session, server, third["id"])
        assert accepted["status"] == "completed"
        # Another model has its own pool (unlimited here).
        assert server.batches.enqueued_tokens("gpt-4o") == 0


async def test_files_get_content_delete(session: aiohttp.ClientSession) -> None:
    data = jsonl([line("a")])
    async with FakeOpenAI(api_key=KEY, batches=FAST) as server:
        status, file = await upload(session, server, data, filename="mine.jsonl")
        assert status == 200
        assert file["id"].startswith("file-")
        assert (file["object"], file["bytes"], file["filename"], file["purpose"]) == (
            "file",
            len(data),
            "mine.jsonl",
            "batch",
        )
        assert (await call(session, server, "GET", f"/files/{file['id']}")) == (200, file)
        async with session.get(f"{server.base_url}/files/{file['id']}/content") as response:
            assert await response.read() == data
            assert response.headers["x-request-id"].startswith("req_")
        status, deleted = await call(session, server, "DELETE", f"/files/{file['id']}")
        assert (status, deleted) == (200, {"id": file["id"], "object": "file", "deleted": True})
        status, body = await call(session, server, "GET", f"/files/{file['id']}")
        assert status == 404
        assert body["error"]["message"] == f"No such File object: {file['id']}"


async def test_uploads_and_creations_are_recorded(session: aiohttp.ClientSession) -> None:
    data = jsonl([line("a")])
    async with FakeOpenAI(api_key=KEY, batches=FAST) as server:
        await start(session, server, [line("a")])
        await upload(session, server, data)
        await upload(session, server, jsonl([line("b")]))
        uploads = server.batches.uploads
        assert len(uploads) == 3
        assert uploads[0].digest == uploads[1].digest != uploads[2].digest
        [creation] = server.batches.creations
        assert creation.input_file_id == uploads[0].file_id
        assert creation.input_digest == uploads[0].digest
        entries = [e for e in server.ledger.entries if e.path == "/v1/files"]
        assert [e.body_digest for e in entries] == [u.digest for u in uploads]


@pytest.mark.parametrize(
    ("filename", "purpose", "param"),
    [
        ("input.txt", "batch", "file"),
        ("input.jsonl", None, "purpose"),
        ("input.jsonl", "nope", "purpose"),
    ],
)
async def test_upload_refusals(
    session: aiohttp.ClientSession, filename: str, purpose: str | None, param: str
) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        status, body = await upload(session, server, b"{}\n", filename=filename, purpose=purpose)
        assert status == 400
        assert body["error"]["param"] == param
        assert server.batches.uploads == []


async def test_create_refusals_and_auth(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        _, file = await upload(session, server, jsonl([line("a")]))
        base = {
            "input_file_id": file["id"],
            "endpoint": "/v1/responses",
            "completion_window": "24h",
        }
        cases = [
            ({**base, "completion_window": "1h"}, 400, "completion_window"),
            ({**base, "endpoint": "/v1/moderations"}, 400, "endpoint"),
            ({**base, "input_file_id": "file-nope"}, 404, "id"),
            ({"endpoint": "/v1/responses", "completion_window": "24h"}, 400, "input_file_id"),
            ({**base, "metadata": {"k": 1}}, 400, "metadata"),
        ]
        for body, expected, param in cases:
            status, answer = await call(session, server, "POST", "/batches", body)
            assert (status, answer["error"]["param"]) == (expected, param), body
        assert server.batches.creations == []
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(f"{server.base_url}/batches/batch_x") as response:
                assert response.status == 401
        status, _ = await call(session, server, "GET", "/batches/batch_nope")
        assert status == 404


async def test_list_pages_newest_first(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, batches=FAST) as server:
        ids = [(await start(session, server, [line("a")]))["id"] for _ in range(5)]
        status, page = await call(session, server, "GET", "/batches?limit=2")
        assert status == 200
        assert [b["id"] for b in page["data"]] == ids[::-1][:2]
        assert (page["object"], page["has_more"]) == ("list", True)
        assert (page["first_id"], page["last_id"]) == (ids[4], ids[3])
        status, rest = await call(session, server, "GET", f"/batches?limit=10&after={ids[3]}")
        assert [b["id"] for b in rest["data"]] == ids[2::-1]
        assert rest["has_more"] is False
        status, _ = await call(session, server, "GET", "/batches?limit=0")
        assert status == 400


async def test_files_list_filters_by_purpose_and_pages_both_ways(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY, batches=FAST) as server:
        ids = []
        for n in range(4):
            _, file = await upload(session, server, jsonl([line(f"f{n}")]), filename=f"{n}.jsonl")
            ids.append(file["id"])
        await upload(session, server, b"{}", filename="notes.txt", purpose="user_data")
        status, page = await call(session, server, "GET", "/files?purpose=batch&limit=3")
        assert status == 200
        assert [f["id"] for f in page["data"]] == ids[::-1][:3]  # newest first by default
        assert (page["object"], page["has_more"]) == ("list", True)
        assert (page["first_id"], page["last_id"]) == (ids[3], ids[1])
        assert page["data"][0] == (await call(session, server, "GET", f"/files/{ids[3]}"))[1]
        _, rest = await call(session, server, "GET", f"/files?purpose=batch&after={ids[1]}")
        assert ([f["id"] for f in rest["data"]], rest["has_more"]) == ([ids[0]], False)
        _, ascending = await call(session, server, "GET", "/files?order=asc&limit=2")
        assert [f["id"] for f in ascending["data"]] == ids[:2]
        _, everything = await call(session, server, "GET", "/files")
        assert [f["purpose"] for f in everything["data"]] == ["user_data"] + ["batch"] * 4
        for bad in ("limit=0", "limit=10001", "order=newest"):
            status, body = await call(session, server, "GET", f"/files?{bad}")
            assert (status, body["error"]["param"]) == (400, bad.split("=")[0])


async def test_cli_server_takes_batch_options_and_shows_its_record() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratelane", "fake-server", "--port", "0", "--api-key", KEY,
        "--batch-time-scale", "0.02", "--batch-expire-after", "2", "--batch-token-limit", "999",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        info = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        server = SimpleNamespace(base_url=info["base_url"])
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            batch = await start(session, server, [line(f"r{i}") for i in range(5)])  # type: ignore[arg-type]
            final, _ = await wait(session, server, batch["id"])  # type: ignore[arg-type]
            assert final["status"] == "expired"
            assert final["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
            async with session.get(info["admin_url"] + "/batches") as response:
                record = await response.json()
        [upload] = record["uploads"]
        assert upload["file_id"] == final["input_file_id"]
        assert len(upload["digest"]) == 32
        assert [c["batch_id"] for c in record["creations"]] == [batch["id"]]
    finally:
        process.terminate()
        await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0


async def test_deleting_the_input_file_does_not_break_a_running_batch(
    session: aiohttp.ClientSession,
) -> None:
    options = BatchOptions(validating_s=0.01, in_progress_s=60)
    async with FakeOpenAI(api_key=KEY, batches=options) as server:
        batch = await start(session, server, [line(f"r{i}") for i in range(40)])
        await wait(session, server, batch["id"], until="in_progress")
        status, _ = await call(session, server, "DELETE", f"/files/{batch['input_file_id']}")
        assert status == 200
        async with session.post(f"{server.url}/_fake/batches/{batch['id']}/expire") as response:
            assert response.status == 200
        final, _ = await wait(session, server, batch["id"])
        assert final["status"] == "expired"
        errors = await content(session, server, final["error_file_id"])
        assert len(errors) == final["request_counts"]["failed"] > 0
