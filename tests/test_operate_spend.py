"""The spend cap wired into file runs: it stops at the right spend, a higher cap completes.

Spend is recomputed the way anyone would check it: from OUTPUT's own
``usage`` lines and the price table (``spent_in_output``). Prices are made
round (1,000 USD per 1M tokens: a tenth of a cent a token) so the bounds read
plainly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

import ratelane
from ratelane import ExitReason, Price
from ratelane._core.prices import BUILTIN_PRICES
from ratelane._core.tokens import estimate_input_tokens
from ratelane._files.projection import project_cost
from ratelane._files.spent import spent_in_output
from ratelane.testing import FakeOpenAI

MODEL = "gpt-4.1-mini"
PRICES = {MODEL: Price(input_per_million=1000.0, output_per_million=1000.0)}
OUTPUT_CAP = 20
LINES = 40
CONCURRENCY = 4


def write_input(path: Path) -> dict[str, object]:
    body = {"model": MODEL, "input": "x" * 40, "max_output_tokens": OUTPUT_CAP}
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {"custom_id": f"r-{n}", "method": "POST", "url": "/v1/responses", "body": body}
            )
            + b"\n"
            for n in range(LINES)
        )
    )
    return body


async def test_the_cap_stops_at_the_right_spend_and_a_higher_cap_completes(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    body = write_input(source)
    worst = (estimate_input_tokens(body) + OUTPUT_CAP) * 1000.0 / 1e6
    cap = 0.25
    common = {
        "api_key": fake_openai.api_key,
        "base_url": fake_openai.base_url,
        "prices": PRICES,
        "max_concurrency": 4 * CONCURRENCY,  # many in flight, each reserving its worst case
        "progress": False,
    }
    stopped = await ratelane.arun_file(source, output, max_cost=cap, **common)
    assert stopped.reason is ExitReason.FATAL and stopped.stop_reason == "max_cost"
    assert "HINT: raise max_cost" in (stopped.stop_message or "")
    spent = spent_in_output(output, PRICES)
    assert spent.unpriced == 0 and spent.lines == stopped.succeeded
    # Never past the cap; and as close as it safely gets: a request that did not fit
    # waited for those in flight to settle, so the run stopped only when one request's
    # worst case no longer fitted with nothing in flight.
    assert cap - worst < spent.usd <= cap
    assert stopped.spent_usd == pytest.approx(spent.usd)
    assert 0 < stopped.succeeded < LINES and stopped.remaining == LINES - stopped.succeeded

    done = await ratelane.arun_file(source, output, max_cost=4 * cap, **common)
    assert done.reason is ExitReason.COMPLETED
    assert done.skipped == stopped.succeeded
    total = spent_in_output(output, PRICES)
    assert total.lines == LINES
    assert total.usd <= 4 * cap
    assert done.spent_usd == pytest.approx(total.usd)  # earlier runs' spend counted


async def test_a_model_with_no_price_stops_a_capped_run_before_sending(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(ratelane.FatalError) as stopped:
        await ratelane.arun_many(
            ["hi"] * 3,
            model="my-local-model",
            api_key=fake_openai.api_key,
            base_url=fake_openai.base_url,
            max_cost=1.0,
        )
    assert stopped.value.reason == "max_cost"
    assert "no price for model 'my-local-model'" in str(stopped.value)
    assert fake_openai.ledger.total == 0


def test_a_price_file_path_is_accepted_and_a_bad_cap_is_refused(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input": 1, "output": 2}}')
    client = ratelane.Client(api_key="sk-test", prices=prices)
    assert repr(client).count("sk-test") == 0
    with pytest.raises(ratelane.ConfigurationError, match="max_cost"):
        ratelane.Client(api_key="sk-test", max_cost=0)
    with pytest.raises(ratelane.ConfigurationError, match="price file"):
        ratelane.Client(api_key="sk-test", prices=tmp_path / "absent.json")


def test_the_dry_run_projection_is_the_range_from_no_output_to_every_cap(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    body = write_input(source)
    projection = project_cost(source, PRICES)
    input_tokens = estimate_input_tokens(body)
    assert projection.priced == LINES
    assert projection.low_usd == pytest.approx(LINES * input_tokens * 1e-3)
    assert projection.high_usd == pytest.approx(LINES * (input_tokens + OUTPUT_CAP) * 1e-3)
    unknown = project_cost(source, {})
    assert unknown.priced == 0 and unknown.unpriced == {MODEL: LINES}
    assert "cost unknown" in unknown.describe()


async def test_client_create_under_a_spent_cap_raises_a_fatal_error_naming_the_cap(
    fake_openai: FakeOpenAI,
) -> None:
    async with ratelane.Client(
        model=MODEL,
        api_key=fake_openai.api_key,
        base_url=fake_openai.base_url,
        prices=PRICES,
        max_cost=0.001,  # below one request's worst case
    ) as client:
        with pytest.raises(ratelane.FatalError) as stopped:
            await client.create({"input": "hi", "max_output_tokens": 5})
    assert stopped.value.reason == "max_cost"
    assert fake_openai.ledger.total == 0


async def test_a_tight_cap_with_real_prices_ends_close_to_the_cap(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    # Real (non-round) prices: reservations settle to float residue, which once left
    # every waiting request waiting for a settle that never came.
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source)
    cap = 0.0005
    stopped = await asyncio.wait_for(
        ratelane.arun_file(
            source,
            output,
            max_cost=cap,
            api_key=fake_openai.api_key,
            base_url=fake_openai.base_url,
            max_concurrency=32,
            progress=False,
        ),
        timeout=30,
    )
    assert stopped.reason is ExitReason.FATAL and stopped.stop_reason == "max_cost"
    spent = spent_in_output(output, BUILTIN_PRICES)
    assert 0 < stopped.succeeded < LINES and spent.lines == stopped.succeeded
    assert spent.usd <= cap and stopped.spent_usd == pytest.approx(spent.usd)
