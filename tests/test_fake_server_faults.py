"""Injected faults: resets, 5xx, stalls, truncated bodies, quota, model quirks, latency."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from ratelane.testing import FAULT_HEADER, FakeOpenAI, Faults, Latency

KEY = "sk-test"
BODY = {"model": "gpt-4o", "input": "hello"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as running:
        yield running


async def post(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    body: dict[str, Any] = BODY,
    *,
    fault: str | None = None,
    timeout_s: float | None = None,
) -> tuple[int, bytes, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    if fault is not None:
        headers[FAULT_HEADER] = fault
    async with session.post(
        server.base_url + "/responses",
        json=body,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s)
        if timeout_s
        else aiohttp.ClientTimeout(total=10),
    ) as response:
        return response.status, await response.read(), response.headers


async def test_reset_closes_the_connection_without_an_answer(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, server, fault="reset")
    [entry] = server.ledger.entries
    assert (entry.status, entry.fault) == (0, "reset")
    assert (await post(session, server))[0] == 200  # the server is fine afterwards


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("500", 500, {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": None, "code": None}),
        ("502", 502, {
            "message": "Bad gateway.", "type": "cf_bad_gateway", "param": None, "code": 502}),
        ("503", 503, {
            "message": "Our servers are currently overloaded. Please try again later.",
            "type": "service_unavailable_error", "param": None, "code": "server_is_overloaded"}),
    ],
)  # fmt: skip
async def test_server_errors_have_the_real_bodies(
    server: FakeOpenAI,
    session: aiohttp.ClientSession,
    fault: str,
    status: int,
    error: dict[str, Any],
) -> None:
    got_status, raw, headers = await post(session, server, fault=fault)
    assert got_status == status
    assert orjson.loads(raw) == {"error": error}
    assert headers["x-request-id"].startswith("req_")
    assert server.ledger.by_fault == {fault: 1}


async def test_truncated_body_fails_only_at_json_parsing(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, raw, headers = await post(session, server, fault="truncated")
    assert status == 200
    assert int(headers["Content-Length"]) == len(raw)
    assert raw.startswith(b'{"id":"resp_')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


async def test_stall_outlasts_a_short_client_timeout(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, faults=Faults(stall_s=30.0)) as server:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await post(session, server, fault="stall", timeout_s=0.3)
        assert time.monotonic() - started < 5
        [entry] = server.ledger.entries
        assert entry.fault == "stall"
    # Closing did not wait for the 30 s stall: the handler was cancelled with the client.
    assert time.monotonic() - started < 10


async def test_stall_then_answer(session: aiohttp.ClientSession) -> None:
    faults = Faults(stall_s=0.2, stall_then="answer")
    async with FakeOpenAI(api_key=KEY, faults=faults) as server:
        started = time.monotonic()
        status, raw, _ = await post(session, server, fault="stall")
        elapsed = time.monotonic() - started
    assert status == 200
    assert orjson.loads(raw)["status"] == "completed"
    assert 0.19 <= elapsed < 5


async def test_stall_then_drop(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, faults=Faults(stall_s=0.1, stall_then="drop")) as server:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, server, fault="stall")
        assert server.ledger.entries[0].status == 0


async def test_quota_mode_always(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, faults=Faults(quota=1.0), rpm=600) as server:
        for _ in range(3):
            status, raw, headers = await post(session, server)
            assert status == 429
            assert orjson.loads(raw) == {
                "error": {
                    "message": "You exceeded your current quota, please check your plan and "
                    "billing details. For more information on this error, read the docs: "
                    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            }
            assert "retry-after" not in headers
            assert headers["x-ratelimit-remaining-requests"] == "600"  # not charged
        assert server.ledger.by_error_code == {"insufficient_quota": 3}


async def test_quota_forced_by_header(server: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    status, raw, _ = await post(session, server, fault="quota")
    assert status == 429
    assert orjson.loads(raw)["error"]["code"] == "insufficient_quota"


async def test_unknown_fault_header_value_is_a_400(
    server: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, raw, _ = await post(session, server, fault="explode")
    assert status == 400
    assert orjson.loads(raw)["error"]["param"] == FAULT_HEADER


async def statuses(session: aiohttp.ClientSession, seed: int, count: int) -> list[int]:
    faults = Faults(error_500=0.2, error_503=0.1, truncated=0.1)
    async with FakeOpenAI(api_key=KEY, faults=faults, seed=seed, rpm=None, tpm=None) as server:
        out = []
        for _ in range(count):
            status, raw, _ = await post(session, server)
            try:
                orjson.loads(raw)
            except orjson.JSONDecodeError:
                status = -1  # truncated
            out.append(status)
        return out


async def test_random_faults_are_reproducible_from_the_seed(
    session: aiohttp.ClientSession,
) -> None:
    first = await statuses(session, seed=7, count=200)
    assert first == await statuses(session, seed=7, count=200)
    assert first != await statuses(session, seed=8, count=200)
    counts = {status: first.count(status) for status in set(first)}
    assert set(counts) == {200, 500, 503, -1}
    assert 20 <= counts[500] <= 60  # p = 0.2 over 200 requests
    assert 60 <= counts[200] <= 180


async def test_forced_fault_does_not_shift_the_random_sequence(
    session: aiohttp.ClientSession,
) -> None:
    async def run(force_first: bool) -> list[int]:
        async with FakeOpenAI(api_key=KEY, faults=Faults(error_500=0.5), seed=3) as server:
            first = await post(session, server, fault="502" if force_first else None)
            rest = [(await post(session, server))[0] for _ in range(30)]
            return [first[0], *rest]

    plain, forced = await run(False), await run(True)
    assert forced[0] == 502
    assert plain[1:] == forced[1:]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/responses", {"model": "gpt-4o", "input": "x", "reasoning": {"effort": "low"}},
         "reasoning.effort"),
        ("/chat/completions",
         {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
          "reasoning_effort": "low"},
         "reasoning_effort"),
    ],
)  # fmt: skip
async def test_reject_reasoning_models(
    session: aiohttp.ClientSession, path: str, body: dict[str, Any], param: str
) -> None:
    faults = Faults(reject_reasoning_models={"gpt-4o"})
    async with FakeOpenAI(api_key=KEY, faults=faults) as server:
        async with session.post(
            server.base_url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert error == {
            "message": f"Unsupported parameter: '{param}' is not supported with this model.",
            "type": "invalid_request_error",
            "param": param,
            "code": "unsupported_parameter",
        }
        # Without the parameter, or for another model, the request works.
        assert (await post(session, server, {"model": "gpt-4o", "input": "x"}))[0] == 200
        other = {**body, "model": "o3"}
        async with session.post(
            server.base_url + path, json=other, headers={"Authorization": f"Bearer {KEY}"}
        ) as response:
            assert response.status == 200


async def test_reject_temperature_models(session: aiohttp.ClientSession) -> None:
    faults = Faults(reject_temperature_models=["o3"])
    async with FakeOpenAI(api_key=KEY, faults=faults) as server:
        status, raw, _ = await post(
            session, server, {"model": "o3", "input": "x", "temperature": 1}
        )
        assert status == 400
        assert orjson.loads(raw)["error"] == {
            "message": "Unsupported parameter: 'temperature' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_parameter",
        }
        assert (await post(session, server, {"model": "o3", "input": "x"}))[0] == 200


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="sum to"):
        Faults(error_500=0.6, reset=0.6)
    with pytest.raises(ValueError, match="probability"):
        Faults(stall=-0.1)
    with pytest.raises(ValueError, match="stall_then"):
        Faults(stall_then="explode")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="collection"):
        Faults(reject_temperature_models="o3")
    assert Faults(reject_reasoning_models=["a", "a"]).reject_reasoning_models == frozenset({"a"})
    assert Faults(quota=0.5).pick(0.49) == "quota"
    assert Faults(quota=0.5).pick(0.5) is None


# -- latency ------------------------------------------------------------------------


async def test_fixed_latency_is_applied(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, latency=0.2) as server:
        started = time.monotonic()
        status, _, headers = await post(session, server)
        elapsed = time.monotonic() - started
    assert status == 200
    assert 0.19 <= elapsed < 5
    assert int(headers["openai-processing-ms"]) >= 190


async def test_latency_sleeps_concurrently(session: aiohttp.ClientSession) -> None:
    async with (
        FakeOpenAI(api_key=KEY, latency=0.2, rpm=None, tpm=None) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as wide,
    ):
        started = time.monotonic()
        results = await asyncio.gather(*(post(wide, server) for _ in range(300)))
        elapsed = time.monotonic() - started
    assert all(status == 200 for status, _, _ in results)
    assert elapsed < 8  # 300 x 0.2 s in sequence would be 60 s


def test_lognormal_latency_is_seeded_with_the_right_median() -> None:
    latency = Latency(0.2, sigma=0.5, per_output_token_s=0.01)
    app = FakeOpenAI(latency=latency, seed=1)._app
    same = FakeOpenAI(latency=latency, seed=1)._app
    values = [app._latency(0) for _ in range(4000)]
    assert values == [same._latency(0) for _ in range(4000)]
    other = FakeOpenAI(latency=latency, seed=2)._app  # one server: its sequence, not 4,000 firsts
    assert values != [other._latency(0) for _ in range(4000)]
    assert statistics.median(values) == pytest.approx(0.2, rel=0.1)
    assert min(values) < 0.1 < 0.4 < max(values)
    # Output tokens add a fixed delay each.
    fixed = FakeOpenAI(latency=Latency(0.1, per_output_token_s=0.01))._app
    assert fixed._latency(10) == pytest.approx(0.2)
