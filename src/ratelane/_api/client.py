"""The public entry points: Client, run_many, arun_many and iter_results."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sized
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

from ratelane._core.config import PROFILES, Price, Profile, RetryPolicy
from ratelane._core.errors import APIError, ConfigurationError, FatalError, InputError
from ratelane._core.items import BodyDefaults, to_request
from ratelane._core.models import ErrorInfo, Request, Result, RunStats
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS
from ratelane._engine.engine import Engine, NotSent, SleepFn
from ratelane._http.transport import Transport
from ratelane._http.wire import DEFAULT_BASE_URL, mask_key
from ratelane._limits.governor import RateGovernor

__all__ = ["Client", "Results", "arun_many", "iter_results", "run_many"]

Items = Iterable[Any] | AsyncIterable[Any]


class Results(list[Result]):
    """The results of a run, in input order, with the run's ``stats``."""

    stats: RunStats

    def __init__(self, results: Iterable[Result], stats: RunStats) -> None:
        super().__init__(results)
        self.stats = stats


class Client:
    """A reusable connection pool, rate governor and retry policy for one API account.

    ``api_key`` defaults to ``OPENAI_API_KEY``, ``base_url`` to ``OPENAI_BASE_URL``
    or ``https://api.openai.com/v1``; ``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID``
    add the organization and project headers, like the official SDK.
    ``rpm``/``tpm`` are ceilings; limits the server announces are learned on top.
    Use as ``async with Client(...) as client:``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        max_concurrency: int = 256,
        retry: RetryPolicy | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        prices: Mapping[str, Price] | None = None,
        sleep: SleepFn = asyncio.sleep,
        seed: int | None = None,
    ) -> None:
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
        self._prices = prices
        self._sleep = sleep
        self._seed = seed
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        governor = self._engine.governor if self._engine is not None else None
        return (
            f"<ratelane.Client base_url={self.base_url!r} api_key={mask_key(self._api_key)!r} "
            f"max_concurrency={self.max_concurrency} governor={governor!r}>"
        )

    async def __aenter__(self) -> Client:
        await self._transport.__aenter__()
        self._engine = Engine(
            self._transport,
            RateGovernor(rpm=self._rpm, tpm=self._tpm),
            self.retry,
            default_output_tokens=self._default_output_tokens,
            prices=self._prices,
            sleep=self._sleep,
            rng=random.Random(self._seed),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._transport.__aexit__(exc_type, exc, tb)
        self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("use the Client inside 'async with Client(...) as client:'")
        return self._engine

    async def create(self, body: Mapping[str, Any], *, path: str = "/v1/responses") -> Result:
        """Send one request (with retries) and return its Result; raise APIError on failure."""
        try:
            result = await self.engine.execute(
                0, to_request(Request(body, None, path), 0, _NO_DEFAULTS)
            )
        except NotSent:
            raise FatalError("not sent: the client was stopped", reason="stopped") from None
        if not result.ok:
            error = result.error or ErrorInfo(None, "request failed")
            raise APIError(
                error.message,
                status_code=result.status_code,
                code=error.code,
                error_type=error.type,
                param=error.param,
                request_id=result.request_id,
                body=result.body,
            )
        return result

    async def iter_results(
        self,
        items: Items,
        *,
        model: str | None = None,
        instructions: str | None = None,
        profile: str | Profile | None = None,
        progress: bool = False,
        **body_defaults: Any,
    ) -> AsyncIterator[Result]:
        """Yield Results as they complete (not in input order; see ``Result.index``)."""
        defaults = _defaults(model, instructions, profile, body_defaults)
        engine = self.engine
        queue: asyncio.Queue[Result | BaseException | None] = asyncio.Queue(
            maxsize=self.max_concurrency
        )
        bar = _progress_bar(progress, items)

        async def sink(result: Result) -> None:
            bar.update(1)
            await queue.put(result)

        async def drive() -> None:
            try:
                await engine.run(
                    _requests(items, defaults), sink, max_concurrency=self.max_concurrency
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
        progress: bool = False,
        **body_defaults: Any,
    ) -> Results:
        """Send every item; return Results in input order with ``.stats``.

        Raises FatalError (carrying the finished results) if the run had to stop.
        """
        defaults = _defaults(model, instructions, profile, body_defaults)
        engine = self.engine
        collected: dict[int, Result] = {}
        with _progress_bar(progress, items) as bar:

            async def sink(result: Result) -> None:
                collected[result.index] = result
                bar.update(1)

            try:
                stats = await engine.run(
                    _requests(items, defaults), sink, max_concurrency=self.max_concurrency
                )
            except FatalError as exc:
                count = max(collected, default=-1) + 1
                exc.results = [collected.get(index) for index in range(count)]
                raise
        return Results((collected[index] for index in range(len(collected))), stats)


_NO_DEFAULTS = BodyDefaults({})


def _defaults(
    model: str | None,
    instructions: str | None,
    profile: str | Profile | None,
    body_defaults: Mapping[str, Any],
) -> BodyDefaults:
    fields: dict[str, Any] = {}
    if profile is not None:
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise ConfigurationError(
                    f"unknown profile {profile!r}. HINT: use one of {sorted(PROFILES)} "
                    "or pass a ratelane.Profile"
                )
            profile = PROFILES[profile]
        fields.update(profile.body_defaults())
    if model is not None:
        fields["model"] = model
    if instructions is not None:
        fields["instructions"] = instructions
    fields.update(body_defaults)
    return BodyDefaults(fields)


def _requests(
    items: Items, defaults: BodyDefaults
) -> Iterator[tuple[int, Request | Result]] | AsyncIterator[tuple[int, Request | Result]]:
    if isinstance(items, str | bytes | Mapping | Request):
        # Iterating these would send their characters or keys as prompts.
        raise ConfigurationError(
            f"items must be a collection of requests, got a single {type(items).__name__}. "
            "HINT: wrap it in a list: run_many([item], ...)"
        )
    if isinstance(items, AsyncIterable):
        return _arequests(items, defaults)
    return (_convert(item, index, defaults) for index, item in enumerate(items))


async def _arequests(
    items: AsyncIterable[Any], defaults: BodyDefaults
) -> AsyncIterator[tuple[int, Request | Result]]:
    index = 0
    async for item in items:
        yield _convert(item, index, defaults)
        index += 1


def _convert(item: Any, index: int, defaults: BodyDefaults) -> tuple[int, Request | Result]:
    try:
        return index, to_request(item, index, defaults)
    except InputError as exc:
        invalid = Result(
            index=index,
            custom_id=f"request-{index}",
            ok=False,
            error=ErrorInfo("invalid_item", str(exc)),
        )
        return index, invalid


def _progress_bar(enabled: bool, items: Items) -> Any:
    total = len(items) if isinstance(items, Sized) else None
    return tqdm(total=total, unit="req", disable=not enabled, dynamic_ncols=True, mininterval=0.25)


async def arun_many(
    items: Items,
    *,
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    max_concurrency: int = 256,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    progress: bool = True,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
    prices: Mapping[str, Price] | None = None,
    **body_defaults: Any,
) -> Results:
    """Send every item from async code; Results in input order, with ``.stats``.

    ``items``: prompt strings, body dicts, Batch-format dicts or Requests, from
    any iterable or async iterable (consumed lazily). Other keyword arguments
    become body fields of every Responses request (``temperature=0.2``, ...).
    """
    async with Client(
        api_key=api_key,
        base_url=base_url,
        rpm=rpm,
        tpm=tpm,
        max_concurrency=max_concurrency,
        retry=retry,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        prices=prices,
    ) as client:
        return await client.run_many(
            items,
            model=model,
            instructions=instructions,
            profile=profile,
            progress=progress,
            **body_defaults,
        )


async def iter_results(
    items: Items,
    *,
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    max_concurrency: int = 256,
    rpm: float | None = None,
    tpm: float | None = None,
    retry: RetryPolicy | None = None,
    progress: bool = False,
    api_key: str | None = None,
    base_url: str | None = None,
    **body_defaults: Any,
) -> AsyncIterator[Result]:
    """Like arun_many, but yield each Result as soon as it completes."""
    async with Client(
        api_key=api_key,
        base_url=base_url,
        rpm=rpm,
        tpm=tpm,
        max_concurrency=max_concurrency,
        retry=retry,
    ) as client:
        async for result in client.iter_results(
            items,
            model=model,
            instructions=instructions,
            profile=profile,
            progress=progress,
            **body_defaults,
        ):
            yield result


def run_many(items: Items, **options: Any) -> Results:
    """Blocking form of arun_many, for scripts and notebooks.

    Inside a running event loop (Jupyter, IPython), the run happens on a fresh
    loop in a worker thread, so there is no "asyncio.run() cannot be called
    from a running event loop" and the caller's loop is left untouched.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_many(items, **options))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ratelane") as pool:
        return pool.submit(asyncio.run, arun_many(items, **options)).result()
