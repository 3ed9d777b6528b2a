"""ratelane: run many OpenAI API requests as fast as the rate limits allow, resumably.

Public API (everything else is private)::

    results = ratelane.run_many(prompts, model="gpt-4.1-mini")
    results = await ratelane.arun_many(prompts, model="gpt-4.1-mini")
    async for result in ratelane.iter_results(prompts, model="gpt-4.1-mini"): ...
    async with ratelane.Client() as client: await client.create({...})
    summary = ratelane.run_file("requests.jsonl", "results.jsonl", model="gpt-4.1-mini")
    for event in ratelane.stream("Hi", model="gpt-4.1-mini"): ...
"""

from typing import Any

from ._api.client import Client, Results
from ._api.conversations import arun_conversations, run_conversations
from ._api.functions import arun_many, iter_results, run_many, stream
from ._core.config import PROFILES, Price, Profile, RetryPolicy
from ._core.durations import format_duration, parse_duration
from ._core.errors import (
    APIError,
    ConfigurationError,
    FatalError,
    InputError,
    OutputLockedError,
    RatelaneError,
    RequestTimeout,
    TransportError,
)
from ._core.models import ErrorInfo, Request, Result, RunStats, Usage
from ._engine.breaker import BreakerPolicy
from ._engine.retry import backoff_wait
from ._files.batch_job import BatchJob, asubmit_batch, submit_batch
from ._files.batch_options import BatchRunOptions
from ._files.file_run import (
    ExitReason,
    FileRun,
    FileRunOptions,
    FileRunSummary,
    arun_file,
    run_file,
)

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
    "APIError",
    "BatchJob",
    "BatchRunOptions",
    "BreakerPolicy",
    "Client",
    "ConfigurationError",
    "ErrorInfo",
    "ExitReason",
    "FatalError",
    "FileRun",
    "FileRunOptions",
    "FileRunSummary",
    "InputError",
    "OutputLockedError",
    "Price",
    "Profile",
    "RatelaneError",
    "RedisLimiter",
    "Request",
    "RequestTimeout",
    "Result",
    "Results",
    "RetryPolicy",
    "RunStats",
    "TransportError",
    "Usage",
    "__version__",
    "arun_conversations",
    "arun_file",
    "arun_many",
    "asubmit_batch",
    "backoff_wait",
    "format_duration",
    "iter_results",
    "parse_duration",
    "run_conversations",
    "run_file",
    "run_many",
    "stream",
    "submit_batch",
]


def __getattr__(name: str) -> Any:
    # Shared budget (issue 13): redis is an extra (pip install 'ratelane[redis]'), so
    # RedisLimiter is imported when asked for, not with ratelane.
    if name == "RedisLimiter":
        from ._limits.redis_budget import RedisLimiter

        return RedisLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
