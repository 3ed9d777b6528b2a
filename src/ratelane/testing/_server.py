"""``FakeOpenAI``: start, address, control and stop the fake server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator
from enum import Enum
from types import TracebackType
from typing import Literal

from aiohttp import web

from ._app import FakeApp
from ._config import DEFAULT_REASONING_PREFIXES, Faults, Latency, ServerOptions
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

    Endpoints: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``,
    ``POST /v1/responses/{id}/cancel``, ``POST /v1/chat/completions``,
    ``POST /v1/embeddings``; admin (no auth): ``POST /_fake/limits``,
    ``GET /_fake/ledger``, ``POST /_fake/reset``.

    Options (all keyword-only):

    - ``api_key``: the only key accepted (``Authorization: Bearer <key>``).
    - ``rpm``, ``tpm``: per-minute limits, ``None`` for unlimited; enforced over
      ``quantum_s`` periods (see ``_ratelimit`` for the exact rules). An
      unlimited dimension sends none of its ``x-ratelimit-*`` headers.
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
        rpm: float | None = None,
        tpm: float | None = None,
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
            background=background if background is not None else Background(),
            streaming=streaming if streaming is not None else Streaming(),
        )
        self._app = FakeApp(self.options)
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._port is not None else "stopped"
        rpm, tpm = self._app.limiter.limits
        return f"FakeOpenAI({state}, rpm={rpm}, tpm={tpm}, ledger={self.ledger!r})"

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
    def limits(self) -> tuple[float | None, float | None]:
        """The current ``(rpm, tpm)``; ``None`` means unlimited."""
        return self._app.limiter.limits

    def set_limits(
        self,
        *,
        rpm: float | Literal[_Keep.KEEP] | None = KEEP,
        tpm: float | Literal[_Keep.KEEP] | None = KEEP,
    ) -> None:
        """Change limits while running (``None`` = unlimited, omitted = unchanged).

        Spent budget carries over: lowering a limit right after a burst gives
        429s until the debt drains at the new rate. Safe from any thread.
        """
        current_rpm, current_tpm = self._app.limiter.limits
        self._app.limiter.set_limits(
            rpm=current_rpm if rpm is KEEP else rpm,
            tpm=current_tpm if tpm is KEEP else tpm,
        )

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

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeOpenAI]:
        """Serve from a background thread with its own event loop, for synchronous code.

        Yields this same object: ``base_url``, ``ledger`` and ``set_limits``
        are safe to use from the calling thread; do not await its coroutines.
        """
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=serve, name="FakeOpenAI", daemon=True)
        thread.start()
        if not started.wait(_THREAD_TIMEOUT_S):
            raise RuntimeError(f"the fake server did not start within {_THREAD_TIMEOUT_S:g} s")
        if failure:
            thread.join(_THREAD_TIMEOUT_S)
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_THREAD_TIMEOUT_S)
