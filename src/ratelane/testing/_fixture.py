"""The ``fake_openai`` pytest fixture (imports pytest; loaded only when asked for).

Use it from a ``conftest.py`` (or a test module)::

    from ratelane.testing import fake_openai  # noqa: F401  (pytest finds it by name)

It yields a started :class:`~ratelane.testing.FakeOpenAI` with its defaults:
a real account's limits (published tier 5, per model, with every rate-limit
header), zero latency, no faults, seed 0. It is an async
fixture (pytest-asyncio), one server per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from ._server import FakeOpenAI

__all__ = ["fake_openai"]


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A running fake OpenAI server: ``base_url``, ``api_key``, ``ledger``, ``set_limits``."""
    async with FakeOpenAI() as server:
        yield server
