"""One rate budget shared by every process on every host, kept in Redis.

OpenAI's limits belong to the organization and project, not to a process: N
processes each pacing at the full limit overshoot N times. A
:class:`RedisLimiter` keeps the request and token buckets in Redis instead, so
all processes that use the same (API key, organization, project, model) draw
from one budget.

The rules, as in the local governor (``governor.py``):

* Each bucket refills continuously at ``limit / 60 * headroom`` per second and
  holds at most ``burst_s`` seconds of it (at least 1), because the server
  enforces per-minute limits over short quanta. Being one bucket for everyone,
  the quantum holds across all processes together: in any window of ``w``
  seconds at most ``rate * (burst_s + w)`` are admitted, whoever asks.
* Time is Redis' own (``TIME`` inside the scripts), so hosts' clocks never
  matter. Every change is one atomic Lua script: no lost updates, no locks.
* Refused callers are told when to come back: when the bucket will hold
  enough after the callers queued before them, so the waiters of all
  processes come back one at a time (about two script calls per admission,
  whatever the number of processes), not as a herd polling together.
* A request charging more tokens than a bucket holds waits for a full bucket
  and then drives it negative, so later requests pay for it (no request is
  ever refused for being large).
* A 429 seen by one process closes the budget for everyone until a "closed
  until" instant on Redis' clock, and empties both buckets so nothing bursts
  when it reopens.
* The Redis keys are a hash of the identity, never the API key itself; hash
  tags keep both keys of one budget in one Redis Cluster slot::

      {prefix}:{<32 hex>}:bucket   hash: limits learned, levels, last update,
                                   closed-until, cool-down count
      {prefix}:{<32 hex>}:procs    sorted set: process id -> last register()

The interface the governor calls (all coroutines except ``processes``/``limits``)::

    wait = await limiter.acquire(requests=1, tokens=N)  # 0.0: admitted (charged);
                                                        # > 0: nothing charged, retry after
                                                        # `wait` seconds (a place in the
                                                        # shared queue of waiters)
    await limiter.admit(requests=1, tokens=N)           # acquire, sleeping the returned wait
    await limiter.correct_tokens(delta)                 # actual - charged: > 0 charges, < 0 refunds
    await limiter.learn(rpm, tpm)                       # x-ratelimit-limit-* (None: unchanged)
    started = await limiter.cool_down(seconds)          # 429: close the budget for everyone
    remaining = await limiter.cooling_until()           # seconds until it reopens (0.0: open)
    n = await limiter.register()                        # heartbeat; processes seen recently
    await limiter.aclose()                              # unregister, close the connections

Every Redis failure (refused, reset, timed out, server loading) surfaces as
:class:`RedisUnavailableError`, raised within ``timeout_s``; call ``register()``
first, so an unreachable Redis is found before anything is sent. Falling back to a
local bucket is the caller's job; ``fallback.FallbackPolicy`` computes the share
(1/N of the limit, N from the last :meth:`RedisLimiter.register`) and when to
try Redis again. When it answers again, call ``register()`` and ``learn()``
with the limits known (a restarted Redis has forgotten them) and use it.

The Lua scripts and the state they keep are in ``redis_scripts.py``.

A limiter binds to the event loop it is first used on (redis-py's asyncio
client does): create one per run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import math
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from ratelane._core.errors import ConfigurationError, RatelaneError
from ratelane._core.redis_url import safe_redis_url

from . import redis_scripts as scripts

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.commands.core import AsyncScript
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ConfigurationError(
        "a shared budget in Redis needs the redis package. HINT: pip install 'ratelane[redis]'"
    ) from _missing

__all__ = [
    "RedisLimiter",
    "RedisUnavailableError",
    "budget_id",
    "safe_redis_url",
]

#: Keys of one budget expire after this long without use, so abandoned budgets vanish.
_BUCKET_TTL_S = 24 * 3600
#: Connections per process at most: admissions go one at a time (see ``admit``), the
#: rest (corrections, heartbeats) are short. 100 processes hold at most 800.
_MAX_CONNECTIONS = 8
#: One script call admits at most this many seconds' worth of the rate for one process.
_BATCH_S = 0.02


class RedisUnavailableError(RatelaneError, ConnectionError):
    """Redis did not answer (refused, reset, timed out, loading): the shared budget is
    out of reach. The caller falls back to a local share of the limit and tries again."""


# --------------------------------------------------------------------------- identity


def budget_id(
    *, api_key: str | None, organization: str | None, project: str | None, model: str
) -> str:
    """32 hex digits naming one budget: blake2b of (key, organization, project, model).

    BLAKE2b personalised for ratelane: the key cannot be read back from it, and
    the same inputs give the same id on every host and Python version.
    """
    parts = (api_key or "", organization or "", project or "", model)
    joined = "\x00".join(parts).encode("utf-8")
    return hashlib.blake2b(joined, digest_size=16, person=b"ratelane-budget").hexdigest()


# --------------------------------------------------------------------------- limiter

_Sleep = Callable[[float], Awaitable[object]]


class RedisLimiter:
    """The request and token budget of one (API key, organization, project, model),
    shared through Redis by every process that names the same one.

    ``rpm``/``tpm`` are this process's ceilings (``None``: only learned limits
    apply; with neither, that bucket admits everything). ``headroom`` and
    ``burst_s`` mean what they mean for the local governor. ``timeout_s``
    bounds every Redis call, ``max_wait_s`` one sleep of :meth:`admit` (a
    longer wait is asked again, so a raised limit is seen; it should exceed
    the queue, about ``processes / rate``, or waiters lose their places).
    ``process_ttl_s``: a process not registered for this long is no longer
    counted.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        model: str = "",
        key_prefix: str = "ratelane",
        rpm: float | None = None,
        tpm: float | None = None,
        headroom: float = 0.985,
        burst_s: float = 0.5,
        timeout_s: float = 1.0,
        max_wait_s: float = 10.0,
        process_ttl_s: float = 10.0,
        sleep: _Sleep = asyncio.sleep,
    ) -> None:
        for name, value in (
            ("headroom", headroom),
            ("burst_s", burst_s),
            ("timeout_s", timeout_s),
            ("max_wait_s", max_wait_s),
            ("process_ttl_s", process_ttl_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        for name, ceiling in (("rpm", rpm), ("tpm", tpm)):
            if ceiling is not None and not (math.isfinite(ceiling) and ceiling > 0):
                raise ConfigurationError(f"{name} must be positive or None, got {ceiling!r}")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                f"not a Redis URL: {safe_redis_url(url)!r}. HINT: redis://HOST:6379/0"
            )
        self._url = url
        #: What :meth:`bound` copies: the identity as given (``None``/``""``: not given)...
        self._identity = (api_key, organization, project, model)
        #: ...and the tuning.
        self._tuning: dict[str, Any] = {
            "key_prefix": key_prefix,
            "rpm": rpm,
            "tpm": tpm,
            "headroom": headroom,
            "burst_s": burst_s,
            "timeout_s": timeout_s,
            "max_wait_s": max_wait_s,
            "process_ttl_s": process_ttl_s,
            "sleep": sleep,
        }
        self._args = (rpm or 0, tpm or 0, headroom, burst_s, _BUCKET_TTL_S)
        self._max_wait_s = max_wait_s
        self._process_ttl_s = process_ttl_s
        self._sleep = sleep
        self._model = model
        self.budget = budget_id(
            api_key=api_key, organization=organization, project=project, model=model
        )
        self.bucket_key = f"{key_prefix}:{{{self.budget}}}:bucket"
        self.processes_key = f"{key_prefix}:{{{self.budget}}}:procs"
        self.process_id = secrets.token_hex(8)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._acquire = self._redis.register_script(scripts.ACQUIRE)
        self._correct = self._redis.register_script(scripts.CORRECT)
        self._cool_down = self._redis.register_script(scripts.COOL_DOWN)
        self._cooling = self._redis.register_script(scripts.COOLING)
        self._register = self._redis.register_script(scripts.REGISTER)
        self._queue = asyncio.Lock()
        #: Waiters of this process in arrival order: (requests, tokens, their future).
        self._waiting: collections.deque[tuple[int, int, asyncio.Future[None]]] = (
            collections.deque()
        )
        #: The limits (per minute) in force at the last answer: ``(rpm, tpm)``, None = none.
        self.limits: tuple[float | None, float | None] = (rpm, tpm)
        #: Processes counted by the last :meth:`register` (1 before any).
        self.processes = 1

    @property
    def url(self) -> str:
        """The Redis URL, password masked (``safe_redis_url``)."""
        return safe_redis_url(self._url)

    @property
    def timeout_s(self) -> float:
        """The bound on every Redis call."""
        return float(self._tuning["timeout_s"])

    @property
    def process_ttl_s(self) -> float:
        return float(self._tuning["process_ttl_s"])

    def bound(
        self,
        *,
        api_key: str | None,
        organization: str | None,
        project: str | None,
        model: str | None,
        rpm: float | None = None,
        tpm: float | None = None,
    ) -> RedisLimiter:
        """A new limiter (own connections, for the running loop) with this one's URL and
        tuning, naming the budget of a Client: each part of the identity this limiter
        was given wins, the Client's fills the rest; ``rpm``/``tpm`` are ceilings used
        where this limiter has none. ``run_many(..., limiter=RedisLimiter(url))`` binds
        it to the run's key, organization, project and model this way."""
        own_key, own_organization, own_project, own_model = self._identity
        tuning = dict(self._tuning)
        tuning["rpm"] = tuning["rpm"] if tuning["rpm"] is not None else rpm
        tuning["tpm"] = tuning["tpm"] if tuning["tpm"] is not None else tpm
        return RedisLimiter(
            self._url,
            api_key=own_key if own_key is not None else api_key,
            organization=own_organization if own_organization is not None else organization,
            project=own_project if own_project is not None else project,
            model=own_model or model or "",
            **tuning,
        )

    # -- one translation boundary for redis-py errors ------------------------
    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise RedisUnavailableError(
                f"Redis at {safe_redis_url(self._url)} did not answer "
                f"({type(error).__name__}). HINT: check that it runs and is reachable; "
                "until it answers, pace locally at a share of the limit."
            ) from None

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._translated():
            return await script(keys=list(keys), args=list(args))

    # -- the governor's interface ------------------------------------------
    async def acquire(self, requests: int = 1, tokens: int = 0, *, queue: bool = True) -> float:
        """Try once to charge ``requests`` and ``tokens``.

        Returns 0.0 when admitted (charged), else the seconds to wait before
        asking again (nothing charged): until a cool-down ends, or until the
        bucket holds enough after the waiters queued before this one (with
        ``queue=False``: ignoring them, and taking no place in the queue).
        One waiter per process at a time should queue (:meth:`admit` does).
        """
        wait_us, rpm, tpm = await self._run(
            self._acquire,
            [self.bucket_key],
            [*self._args, requests, max(0, tokens), 1 if queue else 0],
        )
        self.limits = (_float_or_none(rpm), _float_or_none(tpm))
        return int(wait_us) / 1_000_000

    async def admit(self, requests: int = 1, tokens: int = 0) -> None:
        """Wait until admitted, sleeping exactly the waits Redis returns (each at most
        ``max_wait_s``).

        Waiters of one process line up locally (first come, first served); the
        first in line asks Redis for itself *and those queued behind it* in one
        script call, at most ``_BATCH_S`` (20 ms) of the rate (:meth:`_batch`), and
        keeps one place in the shared queue. So a process admits many requests per
        Redis round trip however busy its event loop is (a loop that answers every
        16 ms still admits a full 600 requests/s), there is no herd of retries, and
        a batch adds at most 2% of the rate to any one-second window.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((requests, max(0, tokens), future))
        try:
            async with self._queue:
                if not future.done():  # admitted by a batch an earlier waiter asked for
                    await self._admit_batch(future)
        except BaseException:
            future.cancel()  # a cancelled waiter leaves the line (nothing is retrieved)
            raise
        future.result()

    async def _admit_batch(self, mine: asyncio.Future[None]) -> None:
        """Admit batches from the front of the line until ``mine`` is admitted."""
        while not mine.done():
            while self._waiting[0][2].done():  # cancelled waiters leave the line here
                self._waiting.popleft()
            batch = self._batch()
            requests = sum(item[0] for item in batch)
            tokens = sum(item[1] for item in batch)
            while (wait := await self.acquire(requests, tokens)) > 0:
                await self._sleep(min(wait, self._max_wait_s))
            for _ in batch:
                _, _, future = self._waiting.popleft()
                if not future.done():
                    future.set_result(None)

    def _batch(self) -> list[tuple[int, int, asyncio.Future[None]]]:
        """The waiters at the front of the line that one call admits: the first, and
        those after it while the batch stays within ``_BATCH_S`` of each rate (by
        the limits Redis last reported; just the first while they are unknown)."""
        rpm, tpm = self.limits
        headroom = self._args[2]
        request_room = rpm / 60 * headroom * _BATCH_S if rpm else 0.0
        token_room = tpm / 60 * headroom * _BATCH_S if tpm else math.inf
        batch = [self._waiting[0]]
        requests, tokens = batch[0][0], batch[0][1]
        for item in itertools.islice(self._waiting, 1, None):
            if item[2].done():
                break  # a cancelled waiter: the batch ends before it
            if requests + item[0] > request_room or tokens + item[1] > token_room:
                break
            batch.append(item)
            requests += item[0]
            tokens += item[1]
        return batch

    async def correct_tokens(self, delta: int) -> None:
        """Charge ``delta`` more tokens (reported usage above the estimate) or refund
        ``-delta`` (below it). A refund never fills a bucket beyond its capacity."""
        if delta:
            await self._run(self._correct, [self.bucket_key], [*self._args, delta])

    async def learn(self, rpm: float | None, tpm: float | None) -> None:
        """Share the limits a response announced (``x-ratelimit-limit-*``) with every
        process. ``None`` leaves that limit as it is."""
        fields = {
            name: repr(float(value))
            for name, value in (("learned_rpm", rpm), ("learned_tpm", tpm))
            if value is not None and value > 0
        }
        if not fields:
            return
        with self._translated():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.bucket_key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(self.bucket_key, _BUCKET_TTL_S)
                await pipe.execute()

    async def cool_down(self, seconds: float) -> bool:
        """Close the budget for every process for ``seconds`` (a 429), emptying both
        buckets. Returns True when this started a cool-down, False when it only
        extended one already running."""
        started, _remaining, _count = await self._run(
            self._cool_down, [self.bucket_key], [*self._args, max(0.0, seconds)]
        )
        return bool(started)

    async def cooling_until(self) -> float:
        """Seconds until the shared budget reopens (0.0: it is open)."""
        remaining_us = await self._run(self._cooling, [self.bucket_key], [])
        return int(remaining_us) / 1_000_000

    async def register(self) -> int:
        """Say this process is alive; return how many were seen within ``process_ttl_s``.

        Call it every few seconds (a third of ``process_ttl_s`` is plenty).
        """
        count = await self._run(
            self._register, [self.processes_key], [self.process_id, self._process_ttl_s]
        )
        self.processes = max(1, int(count))
        return self.processes

    async def reconnect(self) -> None:
        """Drop every pooled connection (a restarted Redis broke them all), so the next
        calls connect afresh instead of each meeting a dead connection once."""
        await self._redis.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Stop counting this process and close the connections (Redis may be gone)."""
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            await self._redis.zrem(self.processes_key, self.process_id)
        await self._redis.aclose()

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        rpm, tpm = self.limits
        return (
            f"<RedisLimiter url={safe_redis_url(self._url)!r} budget={self.budget[:12]}"
            f" model={self._model!r} rpm={_show(rpm)} tpm={_show(tpm)}"
            f" processes={self.processes}>"
        )


def _float_or_none(value: bytes | str | None) -> float | None:
    if not value:
        return None
    return float(value)


def _show(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:.0f}"
