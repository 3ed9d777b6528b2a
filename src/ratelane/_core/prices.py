"""What tokens cost: a dated built-in price table, a JSON override, the Batch API discount.

The table is a snapshot, not a feed: prices change, so it carries its date
(``PRICES_AS_OF``) and every figure can be replaced from a JSON file shaped::

    {"gpt-4.1-mini": {"input": 0.4, "cached_input": 0.1, "output": 1.6}, ...}

(US dollars per million tokens). A model that is in neither table has *no*
price: costs are then reported as unknown, never guessed from a similar name.
Dated snapshots (``gpt-4.1-mini-2025-04-14``) take the price of their alias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from .config import Price
from .errors import ConfigurationError

__all__ = [
    "BATCH_DISCOUNT",
    "BUILTIN_PRICES",
    "PRICES_AS_OF",
    "batch_price",
    "load_prices",
    "price_for",
    "worst_case_cost",
]

#: The day the built-in figures were last compared with OpenAI's published pricing.
PRICES_AS_OF = "2026-06-21"

#: The Batch API bills input and output at half the synchronous price.
BATCH_DISCOUNT = 0.5


def _p(input_: float, cached: float | None, output: float) -> Price:
    return Price(
        input_per_million=input_, output_per_million=output, cached_input_per_million=cached
    )


#: Standard-tier prices, USD per 1M tokens: (input, cached input, output).
BUILTIN_PRICES: Mapping[str, Price] = {
    "gpt-5": _p(1.25, 0.125, 10.0),
    "gpt-5-mini": _p(0.25, 0.025, 2.0),
    "gpt-5-nano": _p(0.05, 0.005, 0.4),
    "gpt-4.1": _p(2.0, 0.5, 8.0),
    "gpt-4.1-mini": _p(0.4, 0.1, 1.6),
    "gpt-4.1-nano": _p(0.1, 0.025, 0.4),
    "gpt-4o": _p(2.5, 1.25, 10.0),
    "gpt-4o-mini": _p(0.15, 0.075, 0.6),
    "o3": _p(2.0, 0.5, 8.0),
    "o4-mini": _p(1.1, 0.275, 4.4),
    "o3-mini": _p(1.1, 0.55, 4.4),
    "o1": _p(15.0, 7.5, 60.0),
    "text-embedding-3-small": _p(0.02, None, 0.0),
    "text-embedding-3-large": _p(0.13, None, 0.0),
    "text-embedding-ada-002": _p(0.1, None, 0.0),
}

_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def price_for(model: str, table: Mapping[str, Price] = BUILTIN_PRICES) -> Price | None:
    """The price of ``model``: exact name first, then its alias without a date suffix."""
    price = table.get(model)
    if price is None:
        alias = _SNAPSHOT_SUFFIX.sub("", model)
        if alias != model:
            price = table.get(alias)
    return price


def batch_price(price: Price) -> Price:
    """``price`` with the Batch API discount applied to every rate."""
    cached = price.cached_input_per_million
    return Price(
        input_per_million=price.input_per_million * BATCH_DISCOUNT,
        output_per_million=price.output_per_million * BATCH_DISCOUNT,
        cached_input_per_million=None if cached is None else cached * BATCH_DISCOUNT,
    )


def worst_case_cost(price: Price, *, input_tokens: int, max_output_tokens: int) -> float:
    """The most one request can cost: every input token uncached, the whole output cap used."""
    return price.cost(input_tokens=input_tokens, cached_tokens=0, output_tokens=max_output_tokens)


_FIELDS = {
    "input": "input_per_million",
    "cached_input": "cached_input_per_million",
    "output": "output_per_million",
}


def load_prices(
    path: str | Path, *, base: Mapping[str, Price] = BUILTIN_PRICES
) -> dict[str, Price]:
    """``base`` updated from the JSON file at ``path``; a ConfigurationError names any problem.

    Each entry needs ``input``; ``output`` defaults to 0 (embeddings) and
    ``cached_input`` to the input price.
    """
    source = Path(path)
    try:
        data = orjson.loads(source.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the price file {source}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"the price file {source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"the price file {source} must hold a JSON object of models, "
            f"got {type(data).__name__}. "
            'HINT: {"gpt-4.1-mini": {"input": 0.4, "cached_input": 0.1, "output": 1.6}}'
        )
    prices = dict(base)
    for model, entry in data.items():
        prices[model] = _parse_entry(source, model, entry)
    return prices


def _parse_entry(source: Path, model: str, entry: Any) -> Price:
    where = f"the price file {source}, model {model!r}"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: expected an object with input/cached_input/output")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown field {unknown[0]!r}. HINT: use input, cached_input and output "
            "(USD per 1M tokens)"
        )
    if "input" not in entry:
        raise ConfigurationError(f"{where}: 'input' (USD per 1M input tokens) is missing")
    values: dict[str, float] = {}
    for name, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigurationError(
                f"{where}: {name!r} must be a number of dollars, zero or more, got {value!r}"
            )
        values[_FIELDS[name]] = float(value)
    values.setdefault("output_per_million", 0.0)
    return Price(**values)
