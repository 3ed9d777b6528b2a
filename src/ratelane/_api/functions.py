"""The one-call entry points: run_many, arun_many and iter_results.

Each takes exactly ``Client(...)``'s options (``ratelane._api.options``) and
builds a Client for the call; a keyword that is neither an option nor a known
body field raises ``TypeError`` at the call, naming the entry point.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ratelane._core.config import Price, Profile, RetryPolicy
from ratelane._core.models import Result
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS

from .client import Client, Items, Results
from .options import client_arguments

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ratelane._limits.redis_budget import RedisLimiter

    from .options import BodyFields

__all__ = ["arun_many", "iter_results", "run_many"]


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
    prices: Mapping[str, Price] | None = None,
    limiter: RedisLimiter | str | None = None,
    **body: Unpack[BodyFields],
) -> Results:
    """Blocking form of arun_many, for scripts and notebooks.

    Inside a running event loop (Jupyter, IPython), the run happens on a fresh
    loop in a worker thread, so there is no "asyncio.run() cannot be called
    from a running event loop" and the caller's loop is left untouched.
    """
    client = Client(**client_arguments("run_many", locals()))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_run(client, items))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ratelane") as pool:
        return pool.submit(asyncio.run, _run(client, items)).result()


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
    prices: Mapping[str, Price] | None = None,
    limiter: RedisLimiter | str | None = None,
    **body: Unpack[BodyFields],
) -> Results:
    """Send every item from async code; Results in input order, with ``.stats``.

    ``items``: prompt strings, body dicts, Batch-format dicts or Requests, from
    any iterable or async iterable (consumed lazily). Known body fields
    (``temperature=0.2``, ...) are defaults of every body; others go in
    ``extra_body``.
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
    prices: Mapping[str, Price] | None = None,
    limiter: RedisLimiter | str | None = None,
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
