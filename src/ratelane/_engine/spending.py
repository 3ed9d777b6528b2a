"""The spend cap's side of a request: reserve its worst case before sending, settle after.

``Run.execute`` calls :func:`reserve` once per request (not per attempt: the
API bills an answer, not a refused or failed attempt) and :func:`settle` once
when the request ends, however it ends. The worst case is the input estimate
(the character count, raised by the input/usage ratio the client has
observed) all uncached, plus the whole output cap (``max_output_tokens``, or
the client's ``default_output_tokens`` when a body sets no cap). A model with
no price cannot be held to a cap: the run stops before sending it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ratelane._core.prices import worst_case_cost
from ratelane._core.tokens import output_budget

if TYPE_CHECKING:
    from .engine import Engine
    from .spend import SpendCap

__all__ = ["reserve", "worst_case_of"]


def worst_case_of(engine: Engine, body: Any, path: str, input_estimate: int) -> float | None:
    """The most this request can cost in USD, or ``None`` when its model has no price."""
    model = body.get("model")
    price = engine.price_of(model) if isinstance(model, str) else None
    if price is None:
        return None
    input_tokens = math.ceil(input_estimate * max(1.0, engine.input_ratio))
    output = (
        0 if path.endswith("/embeddings") else output_budget(body, engine.default_output_tokens)
    )
    return worst_case_cost(price, input_tokens=input_tokens, max_output_tokens=output)


async def reserve(
    cap: SpendCap,
    engine: Engine,
    body: Any,
    path: str,
    input_estimate: int,
    stopping: Callable[[], bool],
) -> tuple[float | None, str | None]:
    """Reserve the request's worst case: ``(reserved USD, None)`` when it fits,
    else ``(0, why the run must stop)``.

    While requests in flight hold reservations, a request that does not fit waits
    for them to settle: they usually cost far less than their worst case, and the
    room they give back lets the run get as close to the cap as it safely can.
    The run stops only when the request does not fit with nothing in flight.
    ``(None, None)``: the run began stopping while this request waited.
    """
    worst = worst_case_of(engine, body, path, input_estimate)
    if worst is None:
        cap.refused += 1
        return 0.0, (
            f"no price for model {body.get('model')!r}, so max_cost cannot be enforced for it. "
            "HINT: add its price with prices= or --prices FILE "
            '(JSON: {"model": {"input": ..., "cached_input": ..., "output": ...}}, USD per 1M '
            "tokens), or drop max_cost"
        )
    while not cap.fits(worst) and cap.holders > 0:
        await cap.settled()
        if stopping():
            return None, None
    if cap.try_reserve(worst):
        return worst, None
    cap.wake()  # the others waiting for room see the run stopping
    return 0.0, (
        f"the spend cap of ${cap.max_cost_usd:,.4f} is reached: ${cap.spent_usd:,.4f} spent, "
        f"${cap.reserved_usd:,.4f} reserved for requests in flight, and the next request may "
        f"cost up to ${worst:,.4f}. HINT: raise max_cost (--max-cost) and run again to continue"
    )
