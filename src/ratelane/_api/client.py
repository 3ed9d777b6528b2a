"""The public entry points: Client, run_many, arun_many and iter_results."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ratelane._core.config import Profile, RetryPolicy
from ratelane._core.errors import ConfigurationError, FatalError
from ratelane._core.items import to_request
from ratelane._core.models import Request, Result, RunStats
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS
from ratelane._engine.breaker import BreakerPolicy, BreakerState
from ratelane._engine.chains import previous_id
from ratelane._engine.circuit import circuit_text
from ratelane._engine.engine import Engine, NotSent, SleepFn
from ratelane._http.transport import Transport
from ratelane._http.wire import DEFAULT_BASE_URL, mask_key
from ratelane._limits.governor import RateGovernor

from . import operating
from .background import BackgroundOption
from .feed import Items, run_items
from .options import Prices, RunOptions, check_body_fields, run_options
from .shared import close_governor, shared_governor
from .streaming import api_error, stream_events

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ratelane._limits.redis_budget import RedisLimiter

    from .options import BodyFields

__all__ = ["Client", "Items", "Results"]


class Results(list[Result]):
    """The results of a run, in input order, with the run's ``stats``."""

    stats: RunStats

    def __init__(self, results: Iterable[Result], stats: RunStats) -> None:
        super().__init__(results)
        self.stats = stats


class Client:
    """A reusable connection pool, rate governor and retry policy for one API account.

    Takes every option of ``run_many`` (see ``ratelane._api.options``): the
    connection and limit options, and run options (``model``, ``instructions``,
    ``profile``, body fields, ``extra_body``, ``progress``) that every call of this
    client uses unless the call sets its own. ``api_key`` defaults to
    ``OPENAI_API_KEY``, ``base_url`` to ``OPENAI_BASE_URL`` or
    ``https://api.openai.com/v1``; ``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID`` add the
    organization and project headers, like the official SDK. ``rpm``/``tpm`` are
    ceilings; limits the server announces are learned on top.

    Operating a run (issue 14; README "Operating a run"): ``prices`` (a table or a
    JSON file's path, over the built-in table), ``max_cost`` (USD: a request is
    sent only if the worst case of everything in flight still fits; per
    ``async with``), ``breaker`` (a circuit breaker, on by default), ``cache`` (an
    SQLite response cache file) and ``remember_limits`` (start from the limits
    learned last time, on by default).

    Testing hooks, on the Client only: ``sleep`` is the backoff sleep (inject a
    virtual clock) and ``jitter_seed`` seeds the backoff jitter (``seed`` is a
    body field of chat completions).
    Use as ``async with Client(...) as client:``.
    """

    def __init__(
        self,
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
        sleep: SleepFn = asyncio.sleep,
        jitter_seed: int | None = None,
        stream: bool = False,
        background: bool = False,
        journal: str | os.PathLike[str] | None = None,
        **body: Unpack[BodyFields],
    ) -> None:
        self._options = RunOptions(
            model=model,
            instructions=instructions,
            profile=profile,
            progress=progress,
            extra_body=extra_body,
            body=check_body_fields("Client", body),
            stream=stream,
            background=background,
            journal=journal,
        )
        self._options.body_defaults()  # an unknown profile fails here, not per call
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ConfigurationError(
                "no API key. HINT: set OPENAI_API_KEY or pass api_key=...; "
                "for offline testing use ratelane.testing.FakeOpenAI"
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, got {max_concurrency}")
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not value > 0:
                raise ConfigurationError(f"{name} must be a positive number or None, got {value!r}")
        self._api_key = key
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self._transport = Transport(
            base_url=self.base_url,
            api_key=key,
            organization=organization or os.environ.get("OPENAI_ORG_ID"),
            project=project or os.environ.get("OPENAI_PROJECT_ID"),
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_concurrency,
        )
        self._rpm = rpm
        self._tpm = tpm
        self._default_output_tokens = default_output_tokens
        # Operating a run (issue 14): checked here, built per ``async with`` (operating.py).
        self._operating = operating.Operating(
            prices=prices,
            max_cost=max_cost,
            breaker=breaker,
            cache=cache,
            remember_limits=remember_limits,
            identity=(
                self.base_url,
                key,
                organization or os.environ.get("OPENAI_ORG_ID"),
                project or os.environ.get("OPENAI_PROJECT_ID"),
            ),
        )
        self._sleep = sleep
        self._seed = jitter_seed
        self._engine: Engine | None = None
        # Shared budget (issue 13): limiter=, else RATELANE_REDIS_URL; None: the local governor.
        self._limiter = limiter or os.environ.get("RATELANE_REDIS_URL") or None
        self._identity = (
            key,
            organization or os.environ.get("OPENAI_ORG_ID"),
            project or os.environ.get("OPENAI_PROJECT_ID"),
        )

    def __repr__(self) -> str:
        governor = self._engine.governor if self._engine is not None else None
        return (
            f"<ratelane.Client base_url={self.base_url!r} api_key={mask_key(self._api_key)!r} "
            f"max_concurrency={self.max_concurrency} governor={governor!r}>"
        )

    async def __aenter__(self) -> Client:
        governor = RateGovernor(rpm=self._rpm, tpm=self._tpm)
        if self._limiter is not None:  # shared budget (issue 13); raises before anything is sent
            model = self._options.body_defaults().model
            governor = await shared_governor(
                self._limiter, self._identity, model, rpm=self._rpm, tpm=self._tpm
            )
        await self._transport.__aenter__()
        self._engine = Engine(
            self._transport,
            governor,
            self.retry,
            default_output_tokens=self._default_output_tokens,
            prices=self._operating.prices,
            sleep=self._sleep,
            rng=random.Random(self._seed),
            **self._operating.open(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._transport.__aexit__(exc_type, exc, tb)
        finally:
            if self._engine is not None:
                self._operating.close(self._engine)  # issue 14: save limits, close the cache
                await close_governor(self._engine.governor)  # shared budget (issue 13)
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("use the Client inside 'async with Client(...) as client:'")
        return self._engine

    async def create(
        self,
        body: Mapping[str, Any],
        *,
        path: str = "/v1/responses",
        previous: Result | str | None = None,
    ) -> Result:
        """Send one request (with retries) and return its Result; raise APIError on failure.

        The Client's run options (``model=``, body fields, ``extra_body``) fill
        what ``body`` leaves out. ``previous``: a Result (or response id) this
        request continues (``previous_response_id``). With ``background=True``
        on the Client, the response is polled to its end.
        """
        if previous is not None:  # chains (issue 12)
            body = {**body, "previous_response_id": previous_id(previous)}
        if self._options.background:  # background mode (issue 12)
            body = {**body, "background": True}
        request = to_request(Request(body, "", path), 0, self._options.body_defaults())
        try:
            result = await self.engine.execute(0, request)
        except NotSent:
            raise FatalError("not sent: the client was stopped", reason="stopped") from None
        if not result.ok:
            raise api_error(result)
        return result

    # -- Streaming (issue 12) --------------------------------------------------------
    def stream(
        self, body: str | Mapping[str, Any], *, path: str = "/v1/responses"
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one request: its SSE events as they arrive, then the final Response.

        ``body`` is a prompt or a body dict, filled from the Client's run options
        like ``create``. See ``ratelane._api.streaming`` for retries and failures.
        """
        item = body if isinstance(body, str) else Request(body, "", path)
        request = to_request(item, 0, self._options.body_defaults())
        return stream_events(self.engine, request)

    def iter_results(
        self,
        items: Items,
        *,
        model: str | None = None,
        instructions: str | None = None,
        profile: str | Profile | None = None,
        progress: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        stream: bool | None = None,
        background: bool | None = None,
        journal: str | os.PathLike[str] | None = None,
        **body: Unpack[BodyFields],
    ) -> AsyncIterator[Result]:
        """Yield Results as they complete (not in input order; see ``Result.index``).

        A run option left at ``None`` is the Client's. Keywords are checked at
        the call: a typo raises ``TypeError`` before anything is read.
        """
        options = run_options("iter_results", locals()).over(self._options)
        options.body_defaults()
        return self._iterate(items, options)

    async def _iterate(self, items: Items, options: RunOptions) -> AsyncIterator[Result]:
        engine = self.engine
        queue: asyncio.Queue[Result | BaseException | None] = asyncio.Queue(
            maxsize=self.max_concurrency
        )
        bar = _progress_bar(bool(options.progress), items)

        async def sink(result: Result) -> None:
            bar.update(1)
            await queue.put(result)

        async def drive() -> None:
            try:
                await run_items(
                    engine,
                    items,
                    options.body_defaults(),
                    sink,
                    max_concurrency=self.max_concurrency,
                    fatal_streak=self.retry.fatal_streak,
                    stream=bool(options.stream),  # Streaming (issue 12)
                    background=BackgroundOption.of(options),
                )
            except BaseException as exc:  # handed to the consumer, re-raised there
                await queue.put(exc)
            else:
                await queue.put(None)

        driver = asyncio.ensure_future(drive())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            bar.close()
            if not driver.done():
                driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)

    async def run_many(
        self,
        items: Items,
        *,
        model: str | None = None,
        instructions: str | None = None,
        profile: str | Profile | None = None,
        progress: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        stream: bool | None = None,
        background: bool | None = None,
        journal: str | os.PathLike[str] | None = None,
        **body: Unpack[BodyFields],
    ) -> Results:
        """Send every item; return Results in input order with ``.stats``.

        A run option left at ``None`` is the Client's. Raises FatalError
        (carrying the finished results) if the run had to stop.
        """
        options = run_options("run_many", locals()).over(self._options)
        defaults = options.body_defaults()
        collected: dict[int, Result] = {}
        with _progress_bar(bool(options.progress), items) as bar:
            breaker = self.engine.breaker if options.progress else None

            async def sink(result: Result) -> None:
                collected[result.index] = result
                if breaker is not None and breaker.state is not BreakerState.CLOSED:  # issue 14
                    bar.set_postfix_str(f"circuit {circuit_text(breaker)}", refresh=False)
                bar.update(1)

            try:
                stats = await run_items(
                    self.engine,
                    items,
                    defaults,
                    sink,
                    max_concurrency=self.max_concurrency,
                    fatal_streak=self.retry.fatal_streak,
                    stream=bool(options.stream),  # Streaming (issue 12)
                    background=BackgroundOption.of(options),
                )
            except FatalError as exc:
                count = max(collected, default=-1) + 1
                exc.results = [collected.get(index) for index in range(count)]
                raise
        return Results((collected[index] for index in range(len(collected))), stats)


def _progress_bar(enabled: bool, items: Items) -> Any:
    total = len(items) if isinstance(items, Sized) else None
    return tqdm(total=total, unit="req", disable=not enabled, dynamic_ncols=True, mininterval=0.25)
