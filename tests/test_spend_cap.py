"""The spend cap's invariant: spent plus reserved never passes the cap."""

import random

import pytest

from ratelane._core.errors import ConfigurationError
from ratelane._engine.spend import SpendCap


def test_admission_stops_before_the_worst_case_could_pass_the_cap() -> None:
    cap = SpendCap(1.0, spent_usd=0.4)
    assert cap.try_reserve(0.3)
    assert cap.try_reserve(0.3)
    assert not cap.try_reserve(0.01)  # 0.4 + 0.6 + 0.01 > 1.0
    assert cap.exhausted
    cap.settle(0.3, 0.05)
    assert cap.spent_usd == pytest.approx(0.45)
    assert cap.reserved_usd == pytest.approx(0.3)


def test_random_interleavings_never_spend_past_the_cap() -> None:
    rng = random.Random(7)
    for _ in range(200):
        cap = SpendCap(rng.uniform(0.01, 2.0))
        in_flight: list[float] = []
        for _ in range(300):
            if in_flight and rng.random() < 0.5:
                reserved = in_flight.pop(rng.randrange(len(in_flight)))
                cap.settle(reserved, reserved * rng.random())  # usage never exceeds worst case
            else:
                worst = rng.uniform(0.0, 0.05)
                if cap.try_reserve(worst):
                    in_flight.append(worst)
            assert cap.spent_usd + cap.reserved_usd <= cap.max_cost_usd + 1e-12


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_a_cap_must_be_a_positive_finite_amount(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="max_cost"):
        SpendCap(bad)


def test_settling_every_holder_leaves_nothing_reserved_despite_float_drift() -> None:
    cap = SpendCap(1.0)
    worst = [0.1, 0.2, 0.3, 0.07, 0.11]
    for amount in worst:
        assert cap.try_reserve(amount)
    for amount in worst:
        cap.settle(amount, amount / 3)
    # Subtracting floats would leave ~1e-17 "reserved", and a request waiting for room
    # would wait for a settle that never comes.
    assert cap.holders == 0 and cap.reserved_usd == 0.0


def test_a_request_waiting_for_room_is_woken_by_each_settle_and_by_wake() -> None:
    import asyncio

    async def scenario() -> list[str]:
        cap = SpendCap(1.0)
        assert cap.try_reserve(0.9)
        seen: list[str] = []

        async def waiter() -> None:
            await cap.settled()
            seen.append("settled")
            await cap.settled()
            seen.append("woken")

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        cap.settle(0.9, 0.2)
        await asyncio.sleep(0)
        cap.wake()
        await asyncio.wait_for(task, 1.0)
        return seen

    assert asyncio.run(scenario()) == ["settled", "woken"]
