"""The shared budget against a real Redis server (see _redis_server.py): pacing across
clients and processes, the shared cool-down, token correction, the key layout, and
Redis lost and back."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from _rate_windows import busiest_window
from _redis_server import RedisServer, redis_server
from ratelane._core.errors import ConfigurationError
from ratelane._limits.fallback import FallbackPolicy
from ratelane._limits.redis_budget import (
    RedisLimiter,
    RedisUnavailableError,
    budget_id,
    safe_redis_url,
)

__all__ = ["redis_server"]

SECRET = "sk-proj-THISKEYMUSTNEVERLEAK0123456789"
HEADROOM = 0.985
BURST_S = 0.5


# --------------------------------------------------------------------------- pure parts


def test_budget_id_is_stable_and_hides_the_key() -> None:
    ident = budget_id(api_key=SECRET, organization="org-1", project="proj-1", model="gpt-4.1")
    # Pinned: the same on every host and Python version.
    assert ident == budget_id(
        api_key=SECRET, organization="org-1", project="proj-1", model="gpt-4.1"
    )
    assert len(ident) == 32 and SECRET not in ident
    others = {
        budget_id(api_key=SECRET + "x", organization="org-1", project="proj-1", model="gpt-4.1"),
        budget_id(api_key=SECRET, organization="org-2", project="proj-1", model="gpt-4.1"),
        budget_id(api_key=SECRET, organization="org-1", project="proj-2", model="gpt-4.1"),
        budget_id(api_key=SECRET, organization="org-1", project="proj-1", model="gpt-4o"),
        # The separator keeps ("ab", "c") and ("a", "bc") apart.
        budget_id(api_key=SECRET, organization="org-1proj-1", project="", model="gpt-4.1"),
    }
    assert ident not in others and len(others) == 5
    pinned = budget_id(api_key="k", organization=None, project=None, model="m")
    assert pinned == "ae621f446e62d8d5a03671854159bc27"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:hunter2@cache/1", "rediss://user:***@cache/1"),
    ],
)
def test_safe_redis_url_masks_the_password(url: str, shown: str) -> None:
    assert safe_redis_url(url) == shown


@pytest.mark.parametrize(
    ("shared", "processes", "local"),
    [(3000.0, 4, 750.0), (3000.0, 1, 3000.0), (3000.0, 0, 3000.0), (None, 4, None)],
)
def test_fallback_share_is_one_nth_of_the_limit(
    shared: float | None, processes: int, local: float | None
) -> None:
    assert FallbackPolicy.local_limit(shared, processes) == local


@pytest.mark.parametrize(
    ("now", "last_probe_at", "probe"), [(10.0, 9.5, False), (10.0, 9.0, True), (10.0, 0.0, True)]
)
def test_fallback_probes_redis_again_every_interval(
    now: float, last_probe_at: float, probe: bool
) -> None:
    policy = FallbackPolicy(probe_interval_s=1.0)
    assert policy.should_probe(now=now, last_probe_at=last_probe_at) is probe


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_fallback_policy_rejects_bad_intervals(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="probe_interval_s"):
        FallbackPolicy(probe_interval_s=bad)


def test_limiter_rejects_a_url_that_is_not_redis_without_showing_the_password() -> None:
    with pytest.raises(ConfigurationError, match="HINT") as caught:
        RedisLimiter("http://:hunter2@localhost:6379")
    assert "hunter2" not in str(caught.value)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def limiters(redis_server: RedisServer) -> AsyncIterator[list[RedisLimiter]]:
    made: list[RedisLimiter] = []
    yield made
    for limiter in made:
        await limiter.aclose()


def _limiter(made: list[RedisLimiter], url: str, **options: float) -> RedisLimiter:
    limiter = RedisLimiter(url, api_key=SECRET, organization="org-1", model="gpt-4.1", **options)
    made.append(limiter)
    return limiter


def _check_pacing(times: Sequence[float], *, rpm: float, ended: float) -> None:
    """Steady-state rate within 3% of the target; no 1 s window beyond the quantum bound."""
    started = min(times)  # processes may start late on a loaded machine
    rate = rpm / 60 * HEADROOM
    capacity = rate * BURST_S
    # Provable bound: a full bucket plus one second of refill.
    assert busiest_window(times, 1.0)[0] <= capacity + rate + 1
    # Steady state: after the opening bucket drained, any second holds about one second's rate.
    # (The opening burst is admitted at once; the bucket is empty right after it.)
    steady = [t for t in times if t >= started + 0.25]
    assert busiest_window(steady, 1.0)[0] <= rate * 1.03 + 1
    achieved = len([t for t in steady if t < ended]) / (ended - started - 0.25)
    assert achieved == pytest.approx(rate, rel=0.03), (achieved, rate)


# --------------------------------------------------------------------------- real Redis


async def _script_calls_and_connections(url: str) -> tuple[int, int]:
    client = aioredis.Redis.from_url(url)
    stats = await client.info("commandstats")
    connected = int((await client.info("clients"))["connected_clients"]) - 1
    await client.aclose()
    calls = sum(int(value["calls"]) for name, value in stats.items() if "eval" in name)
    return calls, connected


async def test_eight_clients_share_one_budget_at_the_rate_without_a_herd(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    rpm = 6000.0  # 98.5 admissions/s for all eight together
    clients = [_limiter(limiters, redis_server.url, rpm=rpm) for _ in range(8)]
    times: list[float] = []
    per_client = [0] * len(clients)
    ended = time.monotonic() + 2.0

    async def worker(index: int) -> None:
        while time.monotonic() < ended:
            await clients[index].admit()
            times.append(time.monotonic())
            per_client[index] += 1

    async with asyncio.TaskGroup() as group:
        for index in range(len(clients)):
            for _ in range(4):
                group.create_task(worker(index))
    _check_pacing(times, rpm=rpm, ended=ended)
    assert min(per_client) > 0.05 * sum(per_client), per_client
    # Waiters come back one after the other, not all at once: about two script calls
    # per admission (ask, come back), however many processes wait; and the 32 waiting
    # tasks did not open a connection each.
    calls, connections = await _script_calls_and_connections(redis_server.url)
    assert calls < 3.5 * len(times)
    assert connections <= len(clients) * 2


def _process_main(url: str, rpm: float, ready: Any, go: Any, end_at: Any, results: Any) -> None:
    """One process of the budget test: register, wait for the start signal, admit in a loop."""

    async def main() -> tuple[int, list[float]]:
        limiter = RedisLimiter(url, api_key=SECRET, model="gpt-4.1", rpm=rpm)
        await limiter.register()
        ready.release()
        await asyncio.to_thread(go.wait)  # a multiprocessing.Event cannot be awaited
        times: list[float] = []

        async def worker() -> None:
            while time.monotonic() < end_at.value:
                await limiter.admit()
                times.append(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(4)))
        seen = await limiter.register()
        await limiter.aclose()
        return seen, times

    results.put(asyncio.run(main()))


def test_processes_share_one_budget_at_the_rate(redis_server: RedisServer) -> None:
    rpm = 3000.0  # 49.25/s across all processes
    # Forked, so the children start at once (no imports to repeat on a loaded machine).
    context = multiprocessing.get_context("fork")
    ready, go, results = context.Semaphore(0), context.Event(), context.Queue()
    end_at = context.Value("d", 0.0)
    arguments = (redis_server.url, rpm, ready, go, end_at, results)
    processes = [context.Process(target=_process_main, args=arguments) for _ in range(3)]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            assert ready.acquire(timeout=10), "a process did not start"
        end_at.value = time.monotonic() + 1.5  # CLOCK_MONOTONIC: one clock for all processes
        go.set()
        outputs = [results.get(timeout=10) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)
    # The first to finish counted all three (the others unregister as they finish).
    assert max(seen for seen, _ in outputs) == 3
    assert all(len(times) > 10 for _, times in outputs), [len(times) for _, times in outputs]
    _check_pacing([t for _, times in outputs for t in times], rpm=rpm, ended=end_at.value)


async def test_a_cool_down_by_one_pauses_all_and_reopens_without_a_burst(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    rpm = 6000.0
    first, second = (_limiter(limiters, redis_server.url, rpm=rpm) for _ in range(2))
    assert await first.acquire() == 0.0
    assert await first.cool_down(0.6) is True
    assert await second.cool_down(0.1) is False  # extends nothing: already closed longer
    wait = await second.acquire()
    assert 0.4 < wait <= 0.6
    assert 0.4 < await second.cooling_until() <= 0.6
    closed_at = time.monotonic()
    await second.admit()
    reopened = time.monotonic()
    assert reopened - closed_at >= wait - 0.02
    assert await second.cooling_until() == 0.0
    # Both buckets were emptied: 0.2 s after reopening, about 0.2 s of rate was admitted.
    times: list[float] = []
    while time.monotonic() < reopened + 0.2:
        await first.admit()
        times.append(time.monotonic())
    assert len(times) <= rpm / 60 * HEADROOM * 0.25 + 2


async def test_reported_usage_refunds_and_charges_tokens(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    tpm = 6000.0  # 98.5 tokens/s, a bucket of 49.25
    limiter = _limiter(limiters, redis_server.url, tpm=tpm)
    assert await limiter.acquire(tokens=49) == 0.0
    wait = await limiter.acquire(tokens=40)
    assert wait == pytest.approx(40 / 98.5, abs=0.03)  # nothing charged by a wait
    await limiter.correct_tokens(-45)  # the answer used 4 tokens, not 49
    assert await limiter.acquire(tokens=40) == 0.0
    await limiter.correct_tokens(+98)  # it used 138, not 40: about a second of debt
    wait = await limiter.acquire(tokens=10)
    assert wait == pytest.approx((98 + 10 - 5.25) / 98.5, abs=0.05)
    # A refund never fills the bucket past its capacity.
    await limiter.correct_tokens(-10_000)
    assert await limiter.acquire(tokens=49) == 0.0
    assert await limiter.acquire(tokens=10) > 0.05


async def test_a_request_larger_than_the_bucket_waits_for_a_full_one_then_owes(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    limiter = _limiter(limiters, redis_server.url, tpm=6000.0)
    assert await limiter.acquire(tokens=200) == 0.0  # full bucket: admitted, ~1.5 s of debt
    assert await limiter.acquire(tokens=1) == pytest.approx((200 - 49.25 + 1) / 98.5, abs=0.05)


async def test_learned_limits_are_shared_and_ceilings_still_apply(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    first = _limiter(limiters, redis_server.url)
    capped = _limiter(limiters, redis_server.url, rpm=600.0)
    assert await first.acquire() == 0.0 and first.limits == (None, None)
    await first.learn(1200.0, 90_000.0)
    await capped.acquire()
    assert capped.limits == (600.0, 90_000.0)  # the lower of ceiling and learned
    await first.acquire()
    assert first.limits == (1200.0, 90_000.0)
    await first.learn(None, 30_000.0)
    await first.acquire()
    assert first.limits == (1200.0, 30_000.0)


async def test_processes_are_counted_while_they_register(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    clients = [_limiter(limiters, redis_server.url, process_ttl_s=0.5) for _ in range(3)]
    for client in clients:
        await client.register()
    assert await clients[0].register() == 3
    await clients[2].aclose()  # unregisters at once
    limiters.remove(clients[2])
    assert await clients[0].register() == 2
    await asyncio.sleep(0.6)  # clients[1] stops registering: forgotten after the TTL
    assert await clients[0].register() == 1


async def test_redis_never_holds_the_api_key(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    limiter = _limiter(limiters, redis_server.url, rpm=600.0, tpm=60_000.0)
    await limiter.register()
    await limiter.admit(tokens=100)
    await limiter.learn(500.0, 40_000.0)
    await limiter.correct_tokens(-20)
    await limiter.cool_down(0.01)
    assert SECRET not in repr(limiter)
    client = aioredis.Redis.from_url(redis_server.url)
    dumped: list[bytes] = []
    async for key in client.scan_iter(match="*"):
        dumped.append(key)
        kind = (await client.type(key)).decode()
        if kind == "hash":
            for field, value in (await client.hgetall(key)).items():
                dumped += [field, value]
        elif kind == "zset":
            dumped += [member for member, _ in await client.zrange(key, 0, -1, withscores=True)]
        else:
            dumped.append(await client.dump(key) or b"")
    await client.aclose()
    assert len(dumped) > 4
    assert any(limiter.budget.encode() in item for item in dumped)
    for item in dumped:
        assert SECRET.encode() not in item and b"THISKEYMUSTNEVERLEAK" not in item


async def test_redis_killed_then_restarted_errors_then_recovers(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    limiter = _limiter(limiters, redis_server.url, rpm=6000.0, timeout_s=0.5)
    assert await limiter.acquire() == 0.0
    assert await limiter.register() == 1
    redis_server.kill()
    for call in (limiter.acquire(), limiter.register(), limiter.cool_down(1.0)):
        began = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="HINT") as caught:
            await call
        assert time.monotonic() - began < 1.5
        assert isinstance(caught.value, ConnectionError)
    with pytest.raises(RedisUnavailableError):
        await limiter.learn(100.0, None)
    redis_server.start()  # same port, empty: the scripts are loaded again on demand
    assert await limiter.acquire() == 0.0
    assert await limiter.register() == 1
    await limiter.learn(1200.0, None)
    await limiter.acquire()
    assert limiter.limits == (1200.0, None)


async def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limiter = RedisLimiter(f"redis://:hunter2@127.0.0.1:{port}/0", timeout_s=0.5)
    try:
        with pytest.raises(RedisUnavailableError) as caught:
            await limiter.register()
    finally:
        await limiter.aclose()
    message = str(caught.value)
    assert f"redis://:***@127.0.0.1:{port}/0" in message and "hunter2" not in message
    assert "HINT" in message and "hunter2" not in repr(limiter)
