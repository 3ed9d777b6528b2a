"""What OUTPUT has cost so far, recomputed from its own ``usage``: the spend cap's starting point.

A resumed file run counts what earlier runs spent on the same OUTPUT, so
``max_cost`` bounds the whole file, not each run of it: the cap holds for the
spend anyone recomputes from OUTPUT afterwards (this function is that
recomputation, also used by the tests). Lines answered from the response
cache (``"ratelane": {"cached": true}``) cost nothing. Read only when a cap
is set: one parse per line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from ratelane._core.config import Price
from ratelane._core.models import Usage
from ratelane._core.prices import price_for

__all__ = ["OutputSpend", "spent_in_output"]

_READ_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True)
class OutputSpend:
    """USD spent on OUTPUT's success lines, and how many had a model with no price."""

    usd: float
    lines: int
    unpriced: int


def spent_in_output(path: str | os.PathLike[str], prices: Mapping[str, Price]) -> OutputSpend:
    usd = 0.0
    lines = unpriced = 0
    try:
        file = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return OutputSpend(0.0, 0, 0)
    with file:
        for raw in file:
            if not raw.endswith(b"\n"):
                break  # a torn last line is not a result
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(line, dict) or line.get("error") is not None:
                continue
            extra = line.get("ratelane")
            if isinstance(extra, dict) and extra.get("cached"):
                continue
            response = line.get("response")
            body = response.get("body") if isinstance(response, dict) else None
            usage = Usage.from_body(body)
            if usage is None or not isinstance(body, dict):
                continue
            lines += 1
            model = body.get("model")
            price = price_for(model, prices) if isinstance(model, str) else None
            if price is None:
                unpriced += 1
                continue
            usd += price.cost(
                input_tokens=usage.input_tokens,
                cached_tokens=usage.cached_tokens,
                output_tokens=usage.output_tokens,
            )
    return OutputSpend(usd, lines, unpriced)
