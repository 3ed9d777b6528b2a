"""The one-call entry points: run_many, arun_many, iter_results and stream.

Each takes exactly ``Client(...)``'s options (``ratelane._api.options``) and
builds a Client for the call; a keyword that is neither an option nor a known
body field raises ``TypeError`` at the call, naming the entry point.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ratelane._core.config import Profile, RetryPolicy
from ratelane._core.models import Result
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS
from ratelane._engine.breaker import BreakerPolicy

from .blocking import run_blocking
from .client import Client, Items, Results
from .options import Prices, client_arguments
from .streaming import in_thread

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ratelane._limits.redis_budget import RedisLimiter

    from .options import BodyFields

__all__ = ["arun_many", "iter_results", "run_many", "stream"]


def run_many(
    items: Items,
    *,
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    progress: bool = False,
    extra_body: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    max_concurrency: int = 256,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    prices: Prices = None,
    max_cost: float | None = None,
    breaker: BreakerPolicy | bool = True,
    cache: str | os.PathLike[str] | None = None,
    remember_limits: bool = True,
    limiter: RedisLimiter | str | None = None,
    stream: bool = False,
    background: bool = False,
    journal: str | os.PathLike[str] | None = None,
    **body: Unpack[BodyFields],
) -> Results:
    """Blocking form of arun_many, for scripts and notebooks.

    Inside a running event loop (Jupyter, IPython), the run happens on a fresh
    loop in a worker thread, so there is no "asyncio.run() cannot be called
    from a running event loop" and the caller's loop is left untouched.
    """
    client = Client(**client_arguments("run_many", locals()))
    return run_blocking(_run(client, items))


async def arun_many(
    items: Items,
    *,
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    progress: bool = False,
    extra_body: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    max_concurrency: int = 256,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    prices: Prices = None,
    max_cost: float | None = None,
    breaker: BreakerPolicy | bool = True,
    cache: str | os.PathLike[str] | None = None,
    remember_limits: bool = True,
    limiter: RedisLimiter | str | None = None,
    stream: bool = False,
    background: bool = False,
    journal: str | os.PathLike[str] | None = None,
    **body: Unpack[BodyFields],
) -> Results:
    """Send every item from async code; Results in input order, with ``.stats``.

    ``items``: prompt strings, body dicts, Batch-format dicts or Requests, from
    any iterable or async iterable (consumed lazily). Known body fields
    (``temperature=0.2``, ...) are defaults of every body; others go in
    ``extra_body``. ``stream=True`` streams each request (Responses and Chat
    Completions) and still returns whole Results, each with ``ttft_s``.
    """
    client = Client(**client_arguments("arun_many", locals()))
    return await _run(client, items)


def iter_results(
    items: Items,
    *,
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    progress: bool = False,
    extra_body: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    max_concurrency: int = 256,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    prices: Prices = None,
    max_cost: float | None = None,
    breaker: BreakerPolicy | bool = True,
    cache: str | os.PathLike[str] | None = None,
    remember_limits: bool = True,
    limiter: RedisLimiter | str | None = None,
    stream: bool = False,
    background: bool = False,
    journal: str | os.PathLike[str] | None = None,
    **body: Unpack[BodyFields],
) -> AsyncIterator[Result]:
    """Like arun_many, but yield each Result as soon as it completes (``async for``)."""
    client = Client(**client_arguments("iter_results", locals()))
    return _iterate(client, items)


async def _run(client: Client, items: Items) -> Results:
    async with client:
        return await client.run_many(items)


async def _iterate(client: Client, items: Items) -> AsyncIterator[Result]:
    async with client:
        async for result in client.iter_results(items):
            yield result


# -- Streaming (issue 12) -------------------------------------------------------------
def stream(
    body: str | Mapping[str, Any],
    /,
    *,
    path: str = "/v1/responses",
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    progress: bool = False,
    extra_body: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    max_concurrency: int = 256,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    prices: Prices = None,
    max_cost: float | None = None,
    breaker: BreakerPolicy | bool = True,
    cache: str | os.PathLike[str] | None = None,
    remember_limits: bool = True,
    limiter: RedisLimiter | str | None = None,
    **fields: Unpack[BodyFields],
) -> Iterator[dict[str, Any]]:
    """Stream one request from synchronous code (a script, a notebook cell).

    ``body`` is a prompt or a body dict; the options are ``run_many``'s. Yields
    the events as they arrive, then the final Response (see the module notes).
    The request runs on its own event loop in a worker thread, so this works
    inside Jupyter too; leaving the loop early cancels it. Keywords are
    checked at the call, as everywhere.
    """
    arguments = {**locals(), "body": fields, "stream": False, "background": False, "journal": None}
    client = Client(**client_arguments("stream", arguments))
    request = body

    async def events() -> AsyncIterator[dict[str, Any]]:
        async with client:
            async for event in client.stream(request, path=path):
                yield event

    return in_thread(events)
