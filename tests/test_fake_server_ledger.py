"""The ledger: one entry per request, counters, bounded memory, the admission series."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from ratelane._core.tokens import estimate_request_tokens
from ratelane.testing import FAULT_HEADER, FakeOpenAI, Ledger, LedgerEntry

KEY = "sk-test"


class FakeClock:
    def __init__(self, start: float = 50.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def send(
    session: aiohttp.ClientSession,
    server: FakeOpenAI,
    raw: bytes,
    path: str = "/responses",
    **headers: str,
) -> tuple[int, Any]:
    async with session.post(
        server.base_url + path,
        data=raw,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers},
    ) as response:
        await response.read()
        return response.status, response.headers


async def test_entry_fields(session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    body = {"model": "gpt-4o", "input": "hi", "metadata": {"custom_id": "row-7"}}
    raw = orjson.dumps(body)
    async with FakeOpenAI(api_key=KEY, clock=clock) as server:
        _, headers = await send(
            session, server, raw, **{"x-stainless-retry-count": "2", FAULT_HEADER: "500"}
        )
        [entry] = server.ledger.entries
    assert entry == LedgerEntry(
        time_s=50.0,
        method="POST",
        path="/v1/responses",
        status=500,
        request_id=headers["x-request-id"],
        model="gpt-4o",
        custom_id="row-7",
        body_digest=hashlib.blake2b(raw, digest_size=16).hexdigest(),
        fault="500",
        tokens=estimate_request_tokens(body),
        retry_count=2,
        error_code=None,
    )
    assert entry.admitted


async def test_counters_cover_every_kind_of_answer(session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with FakeOpenAI(api_key=KEY, clock=clock, rpm=60) as server:
        ok = orjson.dumps({"model": "m", "input": "x"})
        await send(session, server, ok)  # 200
        await send(session, server, ok, **{"x-stainless-retry-count": "1"})  # 429
        await send(session, server, b"{nope")  # 400
        await send(session, server, orjson.dumps({"model": "m", "input": ["x"]}), "/embeddings")
        async with session.get(server.base_url + "/responses/resp_missing") as response:
            assert response.status == 401  # no key
        ledger = server.ledger
        assert ledger.total == 5
        assert ledger.by_status == {200: 1, 429: 2, 400: 1, 401: 1}
        assert ledger.rate_limited == 2
        assert ledger.retried == 1
        assert ledger.by_path == {
            "/v1/responses": 3,
            "/v1/embeddings": 1,
            "/v1/responses/resp_missing": 1,
        }
        assert ledger.by_error_code == {"rate_limit_exceeded": 2}
        assert ledger.tokens_charged == estimate_request_tokens({"model": "m", "input": "x"})
        summary = ledger.summary()
        assert orjson.loads(orjson.dumps(summary)) == summary
        assert summary["by_status"] == {"200": 1, "400": 1, "401": 1, "429": 2}
        assert summary["rate_series"] == [3]  # 429s are not admitted
        ledger.clear()
        assert (ledger.total, ledger.entries, ledger.by_status, ledger.rate_series()) == (
            0,
            [],
            {},
            [],
        )


async def test_ledger_limit_keeps_counters_but_not_entries(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key=KEY, ledger_limit=2) as server:
        for index in range(5):
            raw = orjson.dumps({"model": "m", "input": "x", "metadata": {"custom_id": str(index)}})
            await send(session, server, raw)
        ledger = server.ledger
        assert ledger.total == 5
        assert ledger.dropped == 3
        assert [entry.custom_id for entry in ledger.entries] == ["3", "4"]
        assert ledger.by_status == {200: 5}
        assert sum(ledger.rate_series()) == 5


def entry(time_s: float, status: int = 200) -> LedgerEntry:
    return LedgerEntry(time_s, "POST", "/v1/responses", status)


def test_rate_series_buckets_admitted_requests() -> None:
    ledger = Ledger()
    for time_s, status in [
        (10.0, 200), (10.4, 200), (10.9, 429), (11.5, 200), (11.6, 429), (13.2, 500), (13.99, 0),
    ]:  # fmt: skip
        ledger.record(entry(time_s, status))
    assert ledger.rate_series() == [2, 1, 0, 2]
    assert ledger.rate_series(0.5) == [2, 0, 0, 1, 0, 0, 1, 1]
    assert ledger.rate_series(2.0) == [3, 2]
    with pytest.raises(ValueError, match="multiple"):
        ledger.rate_series(0.015)
    with pytest.raises(ValueError, match="multiple"):
        ledger.rate_series(0)


def test_ledger_limit_zero_keeps_no_entries() -> None:
    ledger = Ledger(limit=0)
    for index in range(3):
        ledger.record(entry(float(index)))
    assert ledger.entries == []
    assert ledger.total == 3
    assert ledger.rate_series() == [1, 1, 1]
    with pytest.raises(ValueError, match="limit"):
        Ledger(limit=-1)
