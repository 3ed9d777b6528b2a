"""Blocking forms of coroutines, for scripts and notebooks alike.

Inside a running event loop (Jupyter, IPython) ``asyncio.run`` refuses to
start; the coroutine then runs on a fresh loop in a worker thread, so the
caller's loop is left untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ["blocking", "run_blocking"]

P = ParamSpec("P")
T = TypeVar("T")


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to the end and return its result, from any caller."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ratelane") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def blocking(coroutine_function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The blocking form of ``coroutine_function``, with the same typed signature."""

    @functools.wraps(coroutine_function)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_blocking(coroutine_function(*args, **kwargs))

    return call
