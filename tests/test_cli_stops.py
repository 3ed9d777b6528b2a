"""Why ``ratelane run`` stopped, said right: an empty INPUT, and fatal stops behind a gateway.

The hint for a fatal stop is chosen by HTTP status, not ``error.code``:
LiteLLM and other gateways send the status as the code (``"401"``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from _inprocess_cli import InProcessCli
from ratelane._cli.summary import stop_cause
from ratelane.testing import FakeOpenAI

TIMEOUT_S = 60


@pytest.fixture
def ratelane(in_process_cli: InProcessCli) -> InProcessCli:
    """``ratelane ARGS`` through ``main(argv)`` in this process: no process boundary needed."""
    return in_process_cli


def env_for(base_url: str, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY=key)
    return env


def write_input(path: Path, count: int) -> None:
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "custom_id": f"r-{n}",
                    "method": "POST",
                    "url": "/v1/responses",
                    "body": {"model": "gpt-4.1-mini", "input": "hi"},
                }
            )
            + b"\n"
            for n in range(count)
        )
    )


# --------------------------------------------------------------------------- empty INPUT


@pytest.mark.parametrize("content", [b"", b"\n \n\r\n"], ids=["empty", "blank-lines"])
def test_an_empty_input_exits_2_and_creates_nothing(
    tmp_path: Path, content: bytes, ratelane: InProcessCli
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    with FakeOpenAI().run_in_thread() as server:
        ran = ratelane("run", source, "-o", tmp_path / "out.jsonl",
                       env=env_for(server.base_url, server.api_key))  # fmt: skip
        dry = ratelane(
            "run", source, "-o", tmp_path / "out.jsonl", "--dry-run", env=os.environ.copy()
        )
        assert server.ledger.total == 0
    assert ran.returncode == 2, ran.stderr
    assert "INPUT holds no requests" in ran.stderr
    assert "already has a success" not in ran.stderr
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert "INPUT holds no requests" in dry.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]  # no OUTPUT, ERRORS, lock or sidecar


# --------------------------------------------------------------------------- fatal stops


@pytest.mark.parametrize(
    ("reason", "status", "label", "hint"),
    [
        ("invalid_api_key", 401, "invalid_api_key, HTTP 401", "check OPENAI_API_KEY"),
        ("401", 401, "invalid API key, HTTP 401", "check OPENAI_API_KEY"),  # LiteLLM
        ("401", None, "invalid API key, HTTP 401", "check OPENAI_API_KEY"),
        ("http_401", None, "invalid API key, HTTP 401", "check OPENAI_API_KEY"),
        ("auth_error", 401, "auth_error, HTTP 401", "check OPENAI_API_KEY"),
        ("403", 403, "permission denied, HTTP 403", "may use this model"),
        ("insufficient_quota", 429, "insufficient_quota, HTTP 429", "billing page"),
        ("429", 429, "quota exhausted, HTTP 429", "billing page"),
        ("billing_hard_limit_reached", 400, "billing_hard_limit_reached, HTTP 400", "spending"),
        ("error_streak", 401, "error_streak, HTTP 401", "read the errors file"),
        ("error_streak", None, "error_streak", "read the errors file"),
        ("something_new", 500, "something_new, HTTP 500", "fix the cause"),
        (None, None, "unknown cause", "fix the cause"),
    ],
)
def test_the_stop_hint_is_chosen_by_status_then_reason(
    reason: str | None, status: int | None, label: str, hint: str
) -> None:
    got_label, got_hint = stop_cause(reason, status)
    assert got_label == label
    assert hint in got_hint


@pytest.fixture
def litellm_401() -> Iterator[str]:
    """A gateway that answers every request like LiteLLM does a wrong key: code "401"."""

    async def reject(request: web.Request) -> web.Response:
        body = {"error": {"message": "Authentication Error, Invalid proxy server token passed.",
                          "type": "auth_error", "param": "None", "code": "401"}}  # fmt: skip
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_post("/v1/responses", reject)
    ready = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        holder.update(loop=loop, url=f"http://127.0.0.1:{port}/v1")
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield str(holder["url"])
    finally:
        loop = holder["loop"]
        loop.call_soon_threadsafe(loop.stop)  # type: ignore[attr-defined]
        thread.join(10)


def test_a_wrong_key_behind_litellm_gets_the_key_hint(
    tmp_path: Path, litellm_401: str, ratelane: InProcessCli
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, 20)
    stopped = ratelane("run", source, "-o", output, env=env_for(litellm_401, "sk-wrong-1234"))
    assert stopped.returncode == 3, stopped.stderr
    # The engine reads LiteLLM's code "401" as the real API's invalid_api_key.
    assert "stopped early (invalid_api_key, HTTP 401)" in stopped.stderr
    assert "HINT: check OPENAI_API_KEY (and OPENAI_BASE_URL)" in stopped.stderr
    assert "sk-wrong-1234" not in stopped.stderr
