"""``ratelane run --via batch`` and ``ratelane batch status|cancel`` against the fake Batch API.

The fake runs batches in compressed time (tens of milliseconds). Every
scenario ends with the invariant of real-time mode: each custom_id has
exactly one line in OUTPUT. "Nothing twice" is asserted on the server's own
record of uploads and batch creations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from _inprocess_cli import InProcessCli
from ratelane.testing import BatchOptions, FakeOpenAI
from ratelane.testing._batches import Batch

KEY = "sk-test-batch-mode-0001"
FAST = BatchOptions(time_scale=0.02)
POLL = ("--poll-interval", "0.01")


def row(custom_id: str, url: str = "/v1/responses", model: str | None = "gpt-4.1-mini") -> bytes:
    if url == "/v1/chat/completions":
        body: dict[str, Any] = {"messages": [{"role": "user", "content": f"hi {custom_id}"}]}
    else:
        body = {"input": f"prompt for {custom_id}"}
    if model is not None:
        body["model"] = model
    line = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return orjson.dumps(line) + b"\n"


def write(path: Path, rows: list[bytes]) -> list[str]:
    path.write_bytes(b"".join(rows))
    return [orjson.loads(raw)["custom_id"] for raw in rows]


def simple(path: Path, count: int) -> list[str]:
    return write(path, [row(f"r-{n}") for n in range(count)])


def env_for(server: FakeOpenAI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_BASE_URL"] = server.base_url
    env["OPENAI_API_KEY"] = KEY
    return env


def assert_each_once(output: Path, ids: list[str]) -> None:
    lines = [orjson.loads(raw) for raw in output.read_bytes().splitlines()]
    seen = [line["custom_id"] for line in lines]
    assert len(seen) == len(set(seen)), "a custom_id appears twice in OUTPUT"
    assert sorted(seen) == sorted(ids)
    assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in lines)


def assert_nothing_twice(server: FakeOpenAI) -> None:
    uploads = [upload.digest for upload in server.batches.uploads]
    assert len(uploads) == len(set(uploads)), "a chunk was uploaded twice"
    files = [creation.input_file_id for creation in server.batches.creations]
    assert len(files) == len(set(files)), "a batch was created twice for one file"


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Any] = []

    def start(options: BatchOptions = FAST) -> FakeOpenAI:
        context = FakeOpenAI(api_key=KEY, batches=options).run_in_thread()
        server = context.__enter__()
        servers.append(context)
        return server

    yield start
    for context in servers:
        context.__exit__(None, None, None)


def test_mixed_endpoints_and_models_split_into_batches_then_status(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    groups = [
        ("/v1/responses", "gpt-4.1-mini"),
        ("/v1/responses", "gpt-4.1-nano"),
        ("/v1/chat/completions", "gpt-4.1-mini"),
        ("/v1/embeddings", "text-embedding-3-small"),
    ]
    rows = [row(f"m-{n}", *groups[n % 4]) for n in range(48)]  # 12 lines a group
    ids = write(tmp_path / "in.jsonl", rows)
    server = serve()
    output = tmp_path / "out.jsonl"
    ran = in_process_cli(
        "run", tmp_path / "in.jsonl", "-o", output, "--via", "batch", "--max-batch-lines", "5",
        *POLL, env=env_for(server),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert_each_once(output, ids)
    creations = server.batches.creations
    assert len(creations) == 4 * 3  # 12 lines a group, 5 a batch: 5 + 5 + 2
    assert sorted({c.endpoint for c in creations}) == sorted({url for url, _ in groups})
    models = {batch(server, c.batch_id).model for c in creations}
    assert models == {model for _, model in groups}
    assert_nothing_twice(server)
    assert "cost" in ran.stderr  # the estimate, at the Batch API's discount

    status = in_process_cli("batch", "status", output, env=env_for(server))
    assert status.returncode == 0, status.stderr
    assert "12 batches: 12 collected (completed)" in status.stdout


def test_sigkill_while_batches_run_then_same_command_completes(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids = simple(tmp_path / "in.jsonl", 60)
    server = serve(BatchOptions(time_scale=0.2))  # 0.6 s to run: time to kill
    output = tmp_path / "out.jsonl"
    argv = ["run", str(tmp_path / "in.jsonl"), "-o", str(output), "--via", "batch",
            "--max-batch-lines", "20", *POLL]  # fmt: skip
    sidecar = Path(f"{output}.batches.json")
    with (tmp_path / "stderr.txt").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratelane", *argv], env=env_for(server), stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while not (
            sidecar.exists()
            and [c["batch_id"] is not None for c in orjson.loads(sidecar.read_bytes())["chunks"]]
            == [True] * 3
        ):
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "no batches created"
            time.sleep(0.01)
        process.kill()
    finally:
        process.kill()
        process.wait(30)
    assert {batch(server, b).status for b in ids_of(server)} & {"validating", "in_progress"}

    again = in_process_cli(*argv, env=env_for(server))
    assert again.returncode == 0, again.stderr
    assert_each_once(output, ids)
    assert len(server.batches.uploads) == len(server.batches.creations) == 3
    assert_nothing_twice(server)


def ids_of(server: FakeOpenAI) -> list[str]:
    return [creation.batch_id for creation in server.batches.creations]


def batch(server: FakeOpenAI, batch_id: str) -> Batch:
    found = server.batches.get(batch_id)
    assert found is not None
    return found


def test_detach_status_cancel_then_rerun_resubmits_what_was_not_delivered(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids = simple(tmp_path / "in.jsonl", 40)
    # Batches that would validate for minutes: `batch cancel` stops them before any line ran.
    server = serve(BatchOptions(time_scale=0.02, validating_s=10_000))
    output = tmp_path / "out.jsonl"
    argv = ["run", tmp_path / "in.jsonl", "-o", output, "--via", "batch",
            "--max-batch-lines", "20", *POLL]  # fmt: skip
    detached = in_process_cli(*argv, "--detach", env=env_for(server))
    assert detached.returncode == 0, detached.stderr
    assert "detached: 2 batches run on the server" in detached.stderr
    assert f"ratelane batch status {output}" in detached.stderr
    assert not output.exists() or output.read_bytes() == b""

    status = in_process_cli("batch", "status", output, env=env_for(server))
    assert status.returncode == 0, status.stderr
    assert "2 batches:" in status.stdout
    assert all("cancelling" not in batch(server, b).history for b in ids_of(server))

    cancel = in_process_cli("batch", "cancel", output, env=env_for(server))
    assert cancel.returncode == 0, cancel.stderr
    assert "2 batches cancelled" in cancel.stdout
    server.batches.options = FAST  # the resubmitted batches run at the usual pace

    again = in_process_cli(*argv, env=env_for(server))
    assert again.returncode == 0, again.stderr
    assert "was cancelled" in again.stderr and "sent again in a new batch" in again.stderr
    assert_each_once(output, ids)
    # Nothing had run: the same two files went into two new batches, none uploaded again.
    assert len(server.batches.uploads) == 2
    assert len(server.batches.creations) == 4


def test_expired_lines_resubmitted_or_sent_in_realtime(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids = simple(tmp_path / "in.jsonl", 30)
    server = serve(BatchOptions(time_scale=0.02, expire_after_lines=20))
    argv = ["run", tmp_path / "in.jsonl", "--via", "batch", *POLL]
    resubmit = in_process_cli(*argv, "-o", tmp_path / "a.jsonl", env=env_for(server))
    assert resubmit.returncode == 0, resubmit.stderr
    assert "expired: 10 of its 30 lines were not run" in resubmit.stderr
    assert_each_once(tmp_path / "a.jsonl", ids)
    assert len(server.batches.creations) == 2  # 30 lines, then the 10 left
    assert batch(server, ids_of(server)[1]).total == 10

    fallback = in_process_cli(
        *argv, "-o", tmp_path / "b.jsonl", "--fallback", "realtime", env=env_for(server)
    )
    assert fallback.returncode == 0, fallback.stderr
    assert "through the real-time API" in fallback.stderr
    assert_each_once(tmp_path / "b.jsonl", ids)
    assert len(server.batches.creations) == 3  # one more batch; its 10 left went real-time


def test_validation_failure_is_reported_at_input_lines(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    rows = [row(f"v-{n}", model=None if n in (2, 6, 11) else "gpt-4.1-mini") for n in range(14)]
    write(tmp_path / "in.jsonl", rows)
    server = serve()
    output = tmp_path / "out.jsonl"
    ran = in_process_cli(
        "run", tmp_path / "in.jsonl", "-o", output, "--via", "batch", *POLL, env=env_for(server)
    )
    assert ran.returncode == 1, ran.stderr
    assert "failed validation at INPUT lines 3, 7, 12" in ran.stderr
    errors = [
        orjson.loads(raw) for raw in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()
    ]
    assert [e["custom_id"] for e in errors] == ["v-2", "v-6", "v-11"]
    assert errors[0]["error"]["message"].startswith(
        "INPUT line 3: Missing required parameter: 'body.model'."
    )
    assert len(output.read_bytes().splitlines()) == 11


def test_token_limit_exceeded_is_waited_out(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids = simple(tmp_path / "in.jsonl", 40)
    # One batch at a time fits the pool; each runs 0.2 s, so the second is refused.
    server = serve(BatchOptions(time_scale=0.02, in_progress_s=10, enqueued_token_limit=150))
    output = tmp_path / "out.jsonl"
    ran = in_process_cli(
        "run", tmp_path / "in.jsonl", "-o", output, "--via", "batch", "--max-batch-lines", "20",
        *POLL, env=env_for(server),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "enqueued-token pool is full" in ran.stderr
    assert_each_once(output, ids)
    assert len(server.batches.uploads) == 2
    assert len(server.batches.creations) == 3  # the refused one once more, after the first

    # Kept under the pool up front: the second batch waits for the first, nobody is refused.
    quick = serve(BatchOptions(time_scale=0.02, enqueued_token_limit=150))
    capped = in_process_cli(
        "run", tmp_path / "in.jsonl", "-o", tmp_path / "capped.jsonl", "--via", "batch",
        "--max-batch-lines", "20", "--max-enqueued-tokens", "150", *POLL, env=env_for(quick),
    )  # fmt: skip
    assert capped.returncode == 0, capped.stderr
    assert "pool is full" not in capped.stderr
    assert_each_once(tmp_path / "capped.jsonl", ids)
    assert len(quick.batches.creations) == 2


def detached(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli, count: int
) -> tuple[list[str], FakeOpenAI, Path, list[Any]]:
    """``count`` lines submitted with --detach: (ids, server, OUTPUT, the run's argv)."""
    ids = simple(tmp_path / "in.jsonl", count)
    server = serve()
    output = tmp_path / "out.jsonl"
    argv = ["run", tmp_path / "in.jsonl", "-o", output, "--via", "batch", *POLL]
    assert in_process_cli(*argv, "--detach", env=env_for(server)).returncode == 0
    return ids, server, output, argv


def test_switching_modes_on_one_output_never_writes_a_line_twice(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids, server, output, batch_argv = detached(tmp_path, serve, in_process_cli, 30)
    # Real time sends every line without a success, while the batch runs on.
    realtime = in_process_cli("run", tmp_path / "in.jsonl", "-o", output, env=env_for(server))
    assert realtime.returncode == 0, realtime.stderr
    assert_each_once(output, ids)
    # The batch delivers lines OUTPUT already holds: collected, none written again.
    collect = in_process_cli(*batch_argv, env=env_for(server))
    assert collect.returncode == 0, collect.stderr
    assert_each_once(output, ids)
    status = in_process_cli("batch", "status", output, env=env_for(server))
    assert "1 batch: 1 collected (completed)" in status.stdout


def test_a_batch_created_but_never_recorded_is_found_not_created_again(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids, server, output, argv = detached(tmp_path, serve, in_process_cli, 10)
    # As if the run died between the server's answer to POST /v1/batches and the save.
    sidecar = Path(f"{output}.batches.json")
    state = orjson.loads(sidecar.read_bytes())
    [chunk] = state["chunks"]
    created, chunk["batch_id"], chunk["status"] = chunk["batch_id"], None, "uploaded"
    sidecar.write_bytes(orjson.dumps(state))
    again = in_process_cli(*argv, env=env_for(server))
    assert again.returncode == 0, again.stderr
    assert f"found {created}" in again.stderr
    assert_each_once(output, ids)
    assert len(server.batches.creations) == 1


def test_batches_that_never_run_stop_the_run_instead_of_looping(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    simple(tmp_path / "in.jsonl", 5)
    server = serve(BatchOptions(time_scale=0.02, expire_after_lines=0))
    ran = in_process_cli(
        "run", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "--via", "batch", *POLL,
        env=env_for(server),
    )  # fmt: skip
    assert ran.returncode == 3, ran.stderr
    assert (
        "3 batches in a row of chunk-00001.jsonl ran nothing" in ran.stderr
        and "--fallback realtime" in ran.stderr
    )
    assert (len(server.batches.uploads), len(server.batches.creations)) == (1, 3)


#: ``python -m ratelane`` that SIGKILLs itself as soon as upload number ``$DIE_AFTER_UPLOAD``
#: is answered: the server has the file, the sidecar never recorded it.
KILLED_AFTER_UPLOAD = """
import os, signal, sys
from ratelane._cli.main import main
from ratelane._http.batch_api import BatchAPI
upload, uploads = BatchAPI.upload_file, []
async def upload_then_die(self, *args, **kwargs):
    file_id = await upload(self, *args, **kwargs)
    uploads.append(file_id)
    if len(uploads) == int(os.environ["DIE_AFTER_UPLOAD"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return file_id
BatchAPI.upload_file = upload_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_between_upload_and_its_record_does_not_upload_again(
    tmp_path: Path, serve: Any, in_process_cli: InProcessCli
) -> None:
    ids = simple(tmp_path / "in.jsonl", 30)
    server = serve()
    output = tmp_path / "out.jsonl"
    argv = ["run", str(tmp_path / "in.jsonl"), "-o", str(output), "--via", "batch",
            "--max-batch-lines", "15", *POLL]  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_UPLOAD, *argv],
        env={**env_for(server), "DIE_AFTER_UPLOAD": "2"},
        capture_output=True,
        timeout=30,
    )
    assert killed.returncode == -9, killed.stderr.decode()
    state = orjson.loads(Path(f"{output}.batches.json").read_bytes())
    assert [(c["status"], c["file_id"]) for c in state["chunks"]][1] == ("planned", None)
    uploads = server.batches.uploads
    assert [u.filename for u in uploads] == [
        f"ratelane-{state['token']}-chunk-0000{n}.jsonl" for n in (1, 2)
    ]

    again = in_process_cli(*argv, env=env_for(server))
    assert again.returncode == 0, again.stderr
    assert f"found {uploads[1].file_id}, uploaded as {uploads[1].filename}" in again.stderr
    assert_each_once(output, ids)
    assert len(server.batches.uploads) == len(server.batches.creations) == 2
    assert_nothing_twice(server)


def test_detach_then_status_then_the_same_command_collects_as_subprocesses(
    tmp_path: Path, serve: Any
) -> None:
    ids = simple(tmp_path / "in.jsonl", 20)
    server = serve(BatchOptions(time_scale=0.02, validating_s=15))  # 0.3 s validating
    output = tmp_path / "out.jsonl"
    run = [sys.executable, "-m", "ratelane", "run", str(tmp_path / "in.jsonl"), "-o", str(output),
           "--via", "batch", "--max-batch-lines", "10", *POLL]  # fmt: skip

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env_for(server), capture_output=True, text=True, timeout=30)

    detached = cli(*run, "--detach", "--no-progress")
    assert detached.returncode == 0, detached.stderr
    assert "detached: 2 batches run on the server" in detached.stderr
    assert f"ratelane batch status {output}" in detached.stderr
    assert not output.exists() or output.read_bytes() == b""

    sidecar = Path(f"{output}.batches.json").read_bytes()
    status = cli(sys.executable, "-m", "ratelane", "batch", "status", str(output))
    assert status.returncode == 0, status.stderr
    assert "2 batches:" in status.stdout  # how far they got depends on the machine's pace
    assert all(f"{b} " in status.stdout for b in ids_of(server))
    # status changed nothing: not the sidecar, not OUTPUT, no batch cancelled.
    assert Path(f"{output}.batches.json").read_bytes() == sidecar
    assert not output.exists() or output.read_bytes() == b""
    assert all("cancelling" not in batch(server, b).history for b in ids_of(server))

    collected = cli(*run, "--no-progress")
    assert collected.returncode == 0, collected.stderr
    assert_each_once(output, ids)
    assert len(server.batches.uploads) == len(server.batches.creations) == 2
    assert_nothing_twice(server)
