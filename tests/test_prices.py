"""The price table: lookups, the Batch discount, the JSON override and its errors."""

from pathlib import Path

import pytest

from ratelane import Price
from ratelane._core.errors import ConfigurationError
from ratelane._core.prices import (
    BUILTIN_PRICES,
    PRICES_AS_OF,
    batch_price,
    load_prices,
    price_for,
    worst_case_cost,
)


def test_a_dated_snapshot_takes_its_alias_price_and_unknown_models_have_none() -> None:
    assert price_for("gpt-4.1-mini-2025-04-14") == BUILTIN_PRICES["gpt-4.1-mini"]
    assert price_for("gpt-4.1-mini") == Price(0.4, 1.6, 0.1)
    assert price_for("my-finetune") is None
    assert price_for("gpt-4.1-mini-latest") is None  # never guessed from a similar name
    assert PRICES_AS_OF.count("-") == 2


def test_the_batch_discount_halves_every_rate() -> None:
    half = batch_price(Price(2.0, 8.0, 0.5))
    assert half == Price(1.0, 4.0, 0.25)
    assert batch_price(Price(0.02, 0.0)).cached_input_per_million is None


def test_worst_case_assumes_no_cache_and_the_whole_output_cap() -> None:
    price = Price(input_per_million=1.0, output_per_million=4.0, cached_input_per_million=0.1)
    assert worst_case_cost(price, input_tokens=1_000, max_output_tokens=500) == pytest.approx(
        (1_000 * 1.0 + 500 * 4.0) / 1e6
    )


def test_a_price_file_overrides_and_extends_the_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        '{"gpt-4.1-mini": {"input": 0.2, "cached_input": 0.05, "output": 0.8},'
        ' "my-embedder": {"input": 0.01}}'
    )
    prices = load_prices(path)
    assert prices["gpt-4.1-mini"] == Price(0.2, 0.8, 0.05)
    assert prices["my-embedder"] == Price(0.01, 0.0)
    assert prices["gpt-4.1"] == BUILTIN_PRICES["gpt-4.1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "must hold a JSON object"),
        ("{nope", "not valid JSON"),
        ('{"m": 3}', "'m': expected an object"),
        ('{"m": {"output": 1}}', "'input'.*missing"),
        ('{"m": {"input": 1, "ouptut": 2}}', "unknown field 'ouptut'"),
        ('{"m": {"input": -1}}', "'input' must be a number"),
        ('{"m": {"input": true}}', "'input' must be a number"),
    ],
)
def test_a_bad_price_file_names_the_model_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=expected):
        load_prices(path)


def test_a_missing_price_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the price file"):
        load_prices(tmp_path / "absent.json")
