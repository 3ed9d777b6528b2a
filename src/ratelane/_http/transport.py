"""The one place aiohttp is spoken: send a body, get status, headers and bytes back.

aiohttp's exceptions are translated here and nowhere else, into
TransportError / RequestTimeout, with messages that never include headers
(the Authorization header carries the key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from multidict import CIMultiDictProxy

from ratelane._core.errors import ConfigurationError, RequestTimeout, TransportError

from .stream import StreamReply, is_event_stream, sse_events
from .wire import auth_headers, join_url, mask_key

__all__ = ["Reply", "Transport", "translated_errors"]


def translated(exc: BaseException, url: str) -> BaseException:
    """The TransportError / RequestTimeout for one of aiohttp's exceptions (others as they are)."""
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"no complete answer from {url} within the timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(f"cannot connect to {url}: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError(f"connection to {url} broke while reading the answer")
    if isinstance(exc, aiohttp.ClientError):
        return TransportError(f"{type(exc).__name__} talking to {url}: {exc}")
    return exc


@contextmanager
def translated_errors(url: str) -> Iterator[None]:
    """Turn aiohttp's exceptions raised inside into TransportError / RequestTimeout."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise translated(exc, url) from None


@dataclass(slots=True)  # built once per answer: plain slots (frozen costs 3x)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes


class Transport:
    """One pooled aiohttp session for a whole run."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        organization: str | None = None,
        project: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"base_url must start with http:// or https://, got {base_url!r}. "
                "HINT: pass the API root, e.g. https://api.openai.com/v1"
            )
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigurationError("timeout_s and connect_timeout_s must be positive seconds")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = auth_headers(api_key, organization=organization, project=project)
        # sock_connect, not connect: the same bound on opening a connection, without
        # aiohttp's per-request pool-wait timer (measured: 3-6% of a request's CPU).
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<Transport base_url={self.base_url!r} api_key={mask_key(self._api_key)!r}>"

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # aiohttp's own User-Agent: skipping it costs 3% of a request's CPU.
            headers=self._headers,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session (auth headers set), for other endpoints' wrappers."""
        if self._session is None:
            raise RuntimeError("Transport used outside 'async with'")
        return self._session

    def url_for(self, path: str) -> str:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = join_url(self.base_url, path)
        return url

    async def post(self, path: str, payload: bytes) -> Reply:
        session = self._session
        if session is None:
            raise RuntimeError("Transport used outside 'async with'")
        url = self.url_for(path)
        # translated_errors written out: a context manager per request costs more
        # than the rest of this method.
        try:
            async with session.post(url, data=payload) as response:
                raw = await response.read()
                return Reply(response.status, response.headers, raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise translated(exc, url) from None

    # -- Streaming (issue 12) ---------------------------------------------------------
    @asynccontextmanager
    async def stream(self, path: str, payload: bytes) -> AsyncIterator[StreamReply]:
        """POST ``payload``; hand back the SSE events while the connection is open.

        See ``_http/stream.py``. Errors while reading the events are translated too.
        """
        url = self.url_for(path)
        with translated_errors(url):
            async with self.session.post(url, data=payload) as response:
                headers = response.headers
                if not is_event_stream(response.status, headers.get("Content-Type", "")):
                    yield StreamReply(response.status, headers, raw=await response.read())
                    return
                events = sse_events(response.content.iter_any())
                try:
                    yield StreamReply(response.status, headers, events)
                finally:
                    await events.aclose()
