"""``FakeOpenAI``: start, address, control and stop the fake server."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Iterator
from enum import Enum
from types import TracebackType
from typing import Literal

from aiohttp import web

from ._app import FakeApp
from ._batch_options import BatchOptions
from ._batches import Batches
from ._config import (
    DEFAULT_REASONING_PREFIXES,
    TIER_5,
    ErrorBody,
    Faults,
    Latency,
    Limit,
    LimitDialect,
    ServerOptions,
    UnsupportedParams,
    Window,
)
from ._ledger import Ledger
from ._modes import Background, Streaming

__all__ = ["KEEP", "FakeOpenAI"]

# Seconds a closing server waits for in-flight handlers (stalls are cancelled).
_SHUTDOWN_TIMEOUT_S = 1.0
# Seconds the thread runner waits for its loop to start or stop.
_THREAD_TIMEOUT_S = 30.0


class _Keep(Enum):
    KEEP = "keep"


#: ``set_limits`` default: leave that limit as it is.
KEEP = _Keep.KEEP


class FakeOpenAI:
    """An imitation of the OpenAI API on 127.0.0.1, for tests and benchmarks.

    ::

        async with FakeOpenAI(rpm=600, tpm=200_000, latency=0.05) as server:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
            ...
            assert server.ledger.by_status[200] == 10

        with FakeOpenAI().run_in_thread() as server:   # for synchronous code
            ...

        server = FakeOpenAI().start_in_thread()        # a notebook: one cell ...
        server.stop()                                  # ... and another, much later

    Endpoints: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``,
    ``POST /v1/responses/{id}/cancel``, ``POST /v1/chat/completions``,
    ``POST /v1/embeddings``; the Batch API (``/v1/files``, ``/v1/batches``,
    see ``_batch_routes``); admin (no auth): ``POST /_fake/limits``,
    ``GET /_fake/ledger``, ``POST /_fake/reset``.

    Options (all keyword-only):

    - ``api_key``: the only key accepted (``Authorization: Bearer <key>``).
    - ``rpm``, ``tpm``: per-minute limits. The default ``TIER_5`` imitates a real
      account: each model has its own limits, the published tier-5 ones
      (``TIER_5_LIMITS``; gpt-4.1-mini 30,000 rpm and 150,000,000 tpm), and
      every answer carries all six ``x-ratelimit-*`` headers. A number applies
      to all models together; ``None`` is unlimited (``rpm=None, tpm=None``: no
      limit and no headers). Enforced over ``quantum_s`` periods (see
      ``_ratelimit`` for the exact rules).
    - ``latency``: seconds per successful answer, or a :class:`Latency`.
    - ``faults``: a :class:`Faults`; ``seed`` makes faults, lognormal latency
      and ids reproducible for the same request order.
    - ``host``, ``port`` (0 = a free port).
    - ``store_limit``: Responses kept for retrieval and chaining (LRU).
    - ``ledger_limit``: ledger entries kept (``None`` = all; counters always).
    - ``reasoning_prefixes``: model-name prefixes treated as reasoning models.
    - ``models``: if given, other model names answer 404 ``model_not_found``.
    - ``embedding_dimensions``: default vector length of ``/v1/embeddings``.
    - ``organization``: named in rate-limit messages and headers.
    - ``rate_limit_headers``: ``False`` enforces the limits but sends no
      ``x-ratelimit-*`` headers, like many OpenAI-compatible servers.
    - ``batches``: a :class:`BatchOptions` (phase durations, expiry, enqueued-token
      limits) for the Batch API endpoints.
    - ``clock``: monotonic seconds for rate limits and ledger times
      (inject a fake clock in tests); latency always sleeps in real time.

    Gateway dialects (protocol doc section 10, LiteLLM as measured):

    - ``limit_dialect``: ``"openai"`` or ``"litellm-key"`` (LiteLLM's per-key
      ``x-ratelimit-api_key-*`` and ``x-litellm-key-rpm|tpm-limit`` headers, no
      reset headers; 429s with ``code: "429"`` and ``retry-after`` in seconds).
    - ``window``: ``"bucket"`` (continuous refill, like OpenAI) or
      ``"fixed-minute"`` (a count per calendar minute, like LiteLLM: once the
      minute is used up everything is refused until it turns).
      ``window_offset_s`` is how far into its first minute the server starts
      (default: the wall clock's), so a test can put the turn a few seconds
      away; ``first_window_used`` starts with that minute used up.
    - ``error_body``: ``"json"`` or ``"text"`` (every error body as plain text).
    - ``unsupported_params``: ``"openai"`` (400 ``unsupported_parameter``) or
      ``"litellm"`` (400 ``code: "400"``, ``litellm.UnsupportedParamsError: ...``).
    - ``request_id_header``: the header carrying the request id
      (``"x-litellm-call-id"`` for LiteLLM).
    - ``clock``: monotonic seconds for rate limits, ledger times and the
      background lifecycle (inject a fake clock in tests); latency always
      sleeps in real time.
    - ``background``: a :class:`Background`, how ``background: true``
      responses move ``queued -> in_progress -> completed`` (or ``failed`` /
      ``incomplete``); polled with ``GET``, cancelled with ``/cancel``.
    - ``streaming``: a :class:`Streaming`, the pacing (first-token latency)
      and faults (cut, ``error``, ``response.failed``) of ``stream: true``.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        rpm: Limit = TIER_5,
        tpm: Limit = TIER_5,
        quantum_s: float = 1.0,
        latency: float | Latency = 0.0,
        faults: Faults | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        store_limit: int = 10_000,
        ledger_limit: int | None = None,
        reasoning_prefixes: Collection[str] = DEFAULT_REASONING_PREFIXES,
        models: Collection[str] | None = None,
        embedding_dimensions: int = 16,
        organization: str = "org-fake",
        clock: Callable[[], float] = time.monotonic,
        rate_limit_headers: bool = True,
        batches: BatchOptions | None = None,
        limit_dialect: LimitDialect = "openai",
        window: Window = "bucket",
        window_offset_s: float | None = None,
        first_window_used: bool = False,
        error_body: ErrorBody = "json",
        unsupported_params: UnsupportedParams = "openai",
        request_id_header: str = "x-request-id",
        background: Background | None = None,
        streaming: Streaming | None = None,
    ) -> None:
        self.options = ServerOptions(
            api_key=api_key,
            rpm=rpm,
            tpm=tpm,
            quantum_s=quantum_s,
            latency=latency if isinstance(latency, Latency) else Latency(float(latency)),
            faults=faults if faults is not None else Faults(),
            seed=seed,
            host=host,
            port=port,
            store_limit=store_limit,
            ledger_limit=ledger_limit,
            reasoning_prefixes=tuple(reasoning_prefixes),
            models=None if models is None else frozenset(models),
            embedding_dimensions=embedding_dimensions,
            organization=organization,
            clock=clock,
            rate_limit_headers=rate_limit_headers,
            batches=batches if batches is not None else BatchOptions(),
            limit_dialect=limit_dialect,
            window=window,
            window_offset_s=window_offset_s,
            first_window_used=first_window_used,
            error_body=error_body,
            unsupported_params=unsupported_params,
            request_id_header=request_id_header,
            background=background if background is not None else Background(),
            streaming=streaming if streaming is not None else Streaming(),
        )
        self._app = FakeApp(self.options)
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        self._thread: _ServerThread | None = None

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._port is not None else "stopped"
        rpm, tpm = self._app.limiter.spec
        return f"FakeOpenAI({state}, rpm={rpm!r}, tpm={tpm!r}, ledger={self.ledger!r})"

    # -- addresses -----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running; use 'async with FakeOpenAI(...)'")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, the root (admin endpoints live under ``/_fake/``)."""
        return f"http://{self.options.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def api_key(self) -> str:
        return self.options.api_key

    # -- control (thread-safe) -----------------------------------------------

    @property
    def ledger(self) -> Ledger:
        return self._app.ledger

    @property
    def batches(self) -> Batches:
        """The Batch API state: ``uploads`` and ``creations`` records, ``get(batch_id)``."""
        return self._app.batches

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """The current ``(rpm, tpm)``; ``None`` means unlimited. With ``TIER_5``
        (per model), those of a model not in the table: see :meth:`limits_for`."""
        return self._app.limiter.limits

    def limits_for(self, model: str) -> tuple[float | None, float | None]:
        """The ``(rpm, tpm)`` that apply to ``model``."""
        return self._app.limiter.resolve(model)

    def set_limits(
        self,
        *,
        rpm: Limit | Literal[_Keep.KEEP] = KEEP,
        tpm: Limit | Literal[_Keep.KEEP] = KEEP,
    ) -> None:
        """Change limits while running (``None`` = unlimited, ``TIER_5`` = per model,
        omitted = unchanged).

        Spent budget carries over: lowering a limit right after a burst gives
        429s until the debt drains at the new rate. Safe from any thread.
        """
        current_rpm, current_tpm = self._app.limiter.spec
        self._app.limiter.set_limits(
            rpm=current_rpm if rpm is KEEP else rpm,
            tpm=current_tpm if tpm is KEEP else tpm,
        )

    def set_faults(self, faults: Faults) -> None:
        """Change the injected faults while running (an outage starts or ends). Safe from any
        thread: the next model request draws from ``faults``."""
        self.options = dataclasses.replace(self.options, faults=faults)
        self._app.options = self.options

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        server = web.Server(self._app.handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            # The default backlog of 128 drops connects when 10,000 clients arrive at once.
            site = web.TCPSite(runner, self.options.host, self.options.port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()
        await self._app.batches.aclose()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def start_in_thread(self) -> FakeOpenAI:
        """Serve from a background thread with its own event loop; returns this object.

        For notebooks and synchronous code: the server runs until :meth:`stop`
        (idempotent) or the interpreter exits (an ``atexit`` hook stops it).
        ``base_url``, ``ledger`` and ``set_limits`` are safe to use from the
        calling thread; do not await its coroutines.
        """
        if self._thread is not None:
            raise RuntimeError("the server is already running in a thread; call stop() first")
        self._thread = _ServerThread(self)
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start_in_thread`; a no-op otherwise."""
        thread, self._thread = self._thread, None
        if thread is not None:
            atexit.unregister(self.stop)
            thread.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeOpenAI]:
        """:meth:`start_in_thread` as a context manager: stops when the block ends."""
        self.start_in_thread()
        try:
            yield self
        finally:
            self.stop()


class _ServerThread:
    """A daemon thread running one server on its own event loop until :meth:`stop`."""

    def __init__(self, server: FakeOpenAI) -> None:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []
        loop = self._loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(server.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=serve, name="FakeOpenAI", daemon=True)
        self._thread.start()
        if not started.wait(_THREAD_TIMEOUT_S):
            raise RuntimeError(f"the fake server did not start within {_THREAD_TIMEOUT_S:g} s")
        if failure:
            self._thread.join(_THREAD_TIMEOUT_S)
            raise failure[0]

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_THREAD_TIMEOUT_S)
