"""The circuit breaker on virtual time: minutes of outage in milliseconds."""

import asyncio

import pytest

from _virtual_time import run
from ratelane._core.errors import ConfigurationError
from ratelane._engine.breaker import BreakerPolicy, BreakerState, CircuitBreaker

POLICY = BreakerPolicy(
    min_failures=4, failure_share=0.5, window_s=10.0, pause_s=2.0, max_pause_s=8.0
)


def test_scattered_failures_in_a_healthy_stream_keep_it_closed() -> None:
    async def scenario() -> None:
        breaker = CircuitBreaker(POLICY)
        for _ in range(30):  # one failure in four: below the share
            breaker.record(failed=True)
            for _ in range(3):
                breaker.record(failed=False)
        assert breaker.state is BreakerState.CLOSED
        assert await breaker.admit() is False

    run(scenario())


def test_failures_older_than_the_window_are_forgotten() -> None:
    async def scenario() -> None:
        breaker = CircuitBreaker(POLICY)
        for _ in range(3):
            breaker.record(failed=True)
        await asyncio.sleep(11)
        breaker.record(failed=True)
        assert breaker.state is BreakerState.CLOSED

    run(scenario())


def test_an_outage_pauses_everyone_then_one_probe_closes_it() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        breaker = CircuitBreaker(POLICY)
        for _ in range(4):
            breaker.record(failed=True)
        assert breaker.state is BreakerState.OPEN
        opened_at = loop.time()
        admitted: list[tuple[int, bool, float]] = []

        async def caller(number: int) -> None:
            probe = await breaker.admit()
            admitted.append((number, probe, loop.time() - opened_at))
            if probe:
                await asyncio.sleep(0.5)  # the probe's round trip
                breaker.record(failed=False, probe=True)

        await asyncio.gather(*(caller(n) for n in range(5)))
        probes = [entry for entry in admitted if entry[1]]
        assert len(probes) == 1
        assert probes[0][2] == pytest.approx(2.0, abs=1e-3)  # nobody before the pause ended
        others = [delay for _, probe, delay in admitted if not probe]
        assert all(delay == pytest.approx(2.5, abs=1e-3) for delay in others)  # after the probe
        assert breaker.state is BreakerState.CLOSED

    run(scenario())


def test_a_failed_probe_doubles_the_pause_up_to_the_cap() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        breaker = CircuitBreaker(POLICY)
        for _ in range(4):
            breaker.record(failed=True)
        probe_times = []
        for _ in range(4):
            start = loop.time()
            assert await breaker.admit() is True
            probe_times.append(round(loop.time() - start, 3))
            breaker.record(failed=True, probe=True)
        assert probe_times == [2.0, 4.0, 8.0, 8.0]
        assert breaker.opened == 5
        assert await breaker.admit() is True
        breaker.record(failed=False, probe=True)
        assert breaker.state is BreakerState.CLOSED
        # Closed again: the next outage starts from the initial pause.
        for _ in range(4):
            breaker.record(failed=True)
        assert breaker.open_for_s == pytest.approx(2.0)

    run(scenario())


def test_an_abandoned_probe_hands_the_probe_to_another_caller() -> None:
    async def scenario() -> None:
        breaker = CircuitBreaker(POLICY)
        for _ in range(4):
            breaker.record(failed=True)
        first = await breaker.admit()
        assert first is True
        second = asyncio.ensure_future(breaker.admit())
        await asyncio.sleep(1)
        assert not second.done()
        breaker.abandon_probe()
        assert await second is True

    run(scenario())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_failures", 0),
        ("failure_share", 0.0),
        ("failure_share", 1.5),
        ("window_s", 0.0),
        ("pause_s", 0.0),
        ("pause_s", 100.0),
    ],
)
def test_bad_policies_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=field):
        BreakerPolicy(**{field: value})
