"""The three other ways to run the fake: CLI subprocess, background thread, pytest fixture."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest

from _inprocess_cli import InProcessCli
from ratelane.testing import FakeOpenAI
from ratelane.testing import fake_openai as fake_openai  # the shipped fixture, used below

TIMEOUT_S = 30


async def start_cli(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratelane", "fake-server", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT_S)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, json.loads(line)


async def stop_cli(process: asyncio.subprocess.Process, signum: int) -> tuple[int, bytes]:
    process.send_signal(signum)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout + stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_cli_prints_one_json_line_serves_and_exits_0(signum: int) -> None:
    process, info = await start_cli("--api-key", "sk-cli", "--rpm", "600", "--seed", "3")
    try:
        assert info["api_key"] == "sk-cli"
        assert info["base_url"] == f"http://127.0.0.1:{info['port']}/v1"
        assert info["pid"] == process.pid
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(
                info["base_url"] + "/responses",
                json={"model": "gpt-4o", "input": "ping"},
                headers={"Authorization": "Bearer sk-cli"},
            ) as response:
                assert response.status == 200
                assert response.headers["x-ratelimit-limit-requests"] == "600"
                body = await response.json()
            assert body["output"][0]["content"][0]["text"] == "Echo: ping"
            async with session.post(info["admin_url"] + "/limits", json={"rpm": 60}) as response:
                assert await response.json() == {"rpm": 60, "tpm": None}
            async with session.get(info["admin_url"] + "/ledger") as response:
                ledger = await response.json()
            assert ledger["by_status"] == {"200": 1}
    finally:
        returncode, output = await stop_cli(process, signum)
    assert returncode == 0, output
    assert output == b""  # the JSON line was the only output


def test_cli_rejects_bad_options(in_process_cli: InProcessCli) -> None:
    # Through main(argv) in this process: a rejected option exits before any server starts.
    result = in_process_cli("fake-server", "--port", "0", "--fail-rate", "2", env=os.environ)
    assert result.returncode == 2
    assert "--fail-rate" in result.stderr
    result = in_process_cli(
        "fake-server", "--port", "0", "--fail-rate", "0.7", "--reset-rate", "0.7", env=os.environ
    )
    assert result.returncode == 2
    assert "sum to" in result.stderr


def urlopen_json(request: urllib.request.Request) -> tuple[int, Any, Any]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), error.headers


def create(server: FakeOpenAI, text: str) -> urllib.request.Request:
    return urllib.request.Request(
        server.base_url + "/responses",
        data=json.dumps({"model": "gpt-4o", "input": text}).encode(),
        headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"},
        method="POST",
    )


def test_run_in_thread_serves_synchronous_code() -> None:
    with FakeOpenAI(api_key="sk-sync").run_in_thread() as server:
        status, body, _ = urlopen_json(create(server, "from a thread"))
        assert status == 200
        assert body["output"][0]["content"][0]["text"] == "Echo: from a thread"
        assert server.ledger.by_status == {200: 1}
        server.set_limits(rpm=60)  # from this thread, while the loop runs in another
        statuses = [urlopen_json(create(server, "x"))[0] for _ in range(3)]
        assert statuses == [200, 429, 429]
        port = server.port
    with socket.socket() as probe:
        probe.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))


def test_run_in_thread_reports_a_failed_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(OSError, match=r"(?i)address already in use"),
            FakeOpenAI(port=port).run_in_thread(),
        ):
            pass


async def test_shipped_fixture(fake_openai: FakeOpenAI) -> None:
    # A real account by default: tier-5 limits per model.
    assert fake_openai.limits_for("gpt-4.1-mini") == (30_000, 150_000_000)
    assert fake_openai.options.latency.is_zero
    assert not fake_openai.options.faults.any_random
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            fake_openai.base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hey"}]},
            headers={"Authorization": f"Bearer {fake_openai.api_key}"},
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"] == "Echo: hey"
