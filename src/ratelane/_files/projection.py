"""What a file would cost, before sending it: the range ``--dry-run`` prints.

For each line still to send, from the same estimates admission uses::

    low  = input estimate at the input price, no output at all
    high = input estimate at the input price + the whole output cap at the output price

(the output cap is ``max_output_tokens`` / ``max_completion_tokens`` /
``max_tokens``, else ``default_output_tokens``; embeddings have no output).
Cached input would only lower both. Lines whose model has no price are
counted, never guessed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ratelane._core.config import Price
from ratelane._core.prices import price_for
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS, estimate_input_tokens, output_budget

from .input import iter_batch_requests

__all__ = ["CostProjection", "project_cost"]


@dataclass(frozen=True, slots=True)
class CostProjection:
    """The projected cost range in USD over ``priced`` lines; ``unpriced``: model -> lines."""

    low_usd: float
    high_usd: float
    priced: int
    unpriced: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        text = (
            f"projected cost: ${self.low_usd:,.4f} to ${self.high_usd:,.4f} for {self.priced:,} "
            "lines (no output at all to every output cap used)"
        )
        if self.unpriced:
            names = ", ".join(f"{model} ({count:,})" for model, count in self.unpriced.items())
            text += (
                f"; cost unknown for lines of models with no price: {names}. "
                "HINT: add their prices with --prices FILE"
            )
        return text


def project_cost(
    path: str | os.PathLike[str],
    prices: Mapping[str, Price],
    *,
    skip: Callable[[str], bool] | None = None,
    default_model: str | None = None,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> CostProjection:
    low = high = 0.0
    priced = 0
    unpriced: dict[str, int] = {}
    for line in iter_batch_requests(path, skip=skip, default_model=default_model):
        model = line.body.get("model")
        price = price_for(model, prices) if isinstance(model, str) else None
        if price is None:
            name = model if isinstance(model, str) else "(no model)"
            unpriced[name] = unpriced.get(name, 0) + 1
            continue
        priced += 1
        input_tokens = estimate_input_tokens(line.body)
        output = (
            0
            if line.path.endswith("/embeddings")
            else output_budget(line.body, default_output_tokens)
        )
        low += price.cost(input_tokens=input_tokens, cached_tokens=0, output_tokens=0)
        high += price.cost(input_tokens=input_tokens, cached_tokens=0, output_tokens=output)
    return CostProjection(low, high, priced, unpriced)
