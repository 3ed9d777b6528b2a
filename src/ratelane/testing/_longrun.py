"""Long-running answers of ``POST /v1/responses``: ``background: true`` and ``stream: true``.

:class:`FakeApp` hands a create here once it is admitted (auth, validation,
quota and rate limits done, no 5xx/reset fault drawn), and sends polls and
cancels of background responses here too. Two checks run earlier, with the
validation (nothing charged): :meth:`LongAnswers.check` refuses
``background`` with ``store: false`` and draws the stream fault.

A request with both ``background`` and ``stream`` streams (starting with
``response.queued``) and is stored finished: it has no polled lifecycle, and
``GET ?stream=true&starting_after=`` (resuming a background stream) is not
implemented. Chaining onto a background response that is still running is
allowed here; what the real API answers then is unverified.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from . import _bodies
from ._background import BackgroundJob, apply_outcome, background_store_false, pick_outcome
from ._config import ServerOptions
from ._modes import STREAM_FAULT_HEADER, STREAM_FAULT_KINDS, Background, StreamFaultKind
from ._sse import Frame, chat_frames, chat_steps, response_frames, response_steps, write_stream
from ._store import ResponseStore, Stored
from ._validate import CHAT_PATH, RESPONSES_PATH, Invalid

__all__ = ["LongAnswers"]

_NO_ODDS = Background(failed=0.0, incomplete=0.0)


def is_long(path: str, body: Any) -> bool:
    """A Responses create asking for background mode or a stream, or a Chat Completions stream."""
    if not isinstance(body, dict):
        return False
    if path == RESPONSES_PATH:
        return bool(body.get("stream") or body.get("background"))
    return path == CHAT_PATH and bool(body.get("stream"))


class LongAnswers:
    """Background jobs and streams of one fake server; lives on its event loop."""

    def __init__(
        self,
        options: ServerOptions,
        store: ResponseStore,
        ids: _bodies.IdMaker,
        latency: Callable[[int], float],
        drop: Callable[[web.BaseRequest], None],
    ) -> None:
        self._options = options
        self._store = store
        self._ids = ids
        self._latency = latency
        self._drop = drop
        self._clock = options.clock
        self._outcome_random = random.Random(f"background-{options.seed}").random
        self._stream_random = random.Random(f"stream-faults-{options.seed}").random

    def check(self, request: web.BaseRequest, body: Mapping[str, Any]) -> StreamFaultKind | None:
        """Raise :class:`Invalid` for a refused combination; the stream fault, if any."""
        if body.get("background") and body.get("store") is False:
            raise Invalid(400, background_store_false(), "unsupported_value")
        if not body.get("stream"):
            return None
        streaming = self._options.streaming
        # Draw for every stream, forced or not, so forcing one does not shift the others.
        drawn = streaming.pick(self._stream_random()) if streaming.any_random else None
        forced = request.headers.get(STREAM_FAULT_HEADER)
        if forced is None:
            return drawn
        if forced not in STREAM_FAULT_KINDS:
            raise Invalid(
                400,
                _bodies.error(
                    f"Unknown {STREAM_FAULT_HEADER} value '{forced}'. "
                    f"Use one of: {', '.join(STREAM_FAULT_KINDS)}.",
                    "invalid_request_error",
                    STREAM_FAULT_HEADER,
                    None,
                ),
            )
        return forced

    async def answer(
        self,
        request: web.BaseRequest,
        body: Mapping[str, Any],
        *,
        path: str,
        context_tokens: int,
        custom_id: str | None,
        headers: Mapping[str, str],
        fault: str | None,
        stream_fault: StreamFaultKind | None,
    ) -> web.StreamResponse:
        """Create the response, store it, and answer ``queued`` or with the stream.

        Of the plain faults, only ``stall`` and ``truncated`` get here: a stall
        holds the request first (then drops it or answers), a truncated stream
        is a cut one, a truncated background create is half its JSON.
        """
        if fault == "stall":
            await asyncio.sleep(self._options.faults.stall_s)
            if self._options.faults.stall_then == "drop":
                self._drop(request)
                return web.Response(status=500)
        if fault == "truncated":
            stream_fault = "cut"
        if path == CHAT_PATH:
            frames = self._chat_frames(body, stream_fault)
            return await self._stream(request, headers, frames, stream_fault)
        background = bool(body.get("background"))
        response = _bodies.response_object(
            body,
            ids=self._ids,
            now=int(time.time()),
            reasoning_model=self._options.is_reasoning_model(body["model"]),
            context_tokens=context_tokens,
        )
        odds = self._options.background if background else _NO_ODDS
        draw = self._outcome_random() if background else 1.0
        final = apply_outcome(response, pick_outcome(body, odds, draw))
        job = self._keep(final, background, custom_id, streamed=bool(body.get("stream")))
        if body.get("stream"):
            steps = response_steps(
                final,
                chunk_chars=self._options.streaming.chunk_chars,
                fault=stream_fault,
                background=background,
            )
            return await self._stream(request, headers, response_frames(steps), stream_fault)
        assert job is not None  # not streamed, so background
        payload = job.view(self._clock())
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        return web.Response(status=200, body=payload, headers=headers)

    def _chat_frames(self, body: Mapping[str, Any], fault: StreamFaultKind | None) -> list[Frame]:
        completion = _bodies.chat_completion(
            body,
            ids=self._ids,
            now=int(time.time()),
            reasoning_model=self._options.is_reasoning_model(body["model"]),
        )
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, Mapping) and bool(
            stream_options.get("include_usage")
        )
        steps = chat_steps(
            completion,
            chunk_chars=self._options.streaming.chunk_chars,
            include_usage=include_usage,
            fault=fault,
        )
        return chat_frames(steps, done=fault is None)

    async def _stream(
        self,
        request: web.BaseRequest,
        headers: Mapping[str, str],
        frames: list[Frame],
        fault: StreamFaultKind | None = None,
    ) -> web.StreamResponse:
        first_token_s = self._options.streaming.first_token_s
        return await write_stream(
            request,
            headers,
            frames,
            first_token_s=self._latency(0) if first_token_s is None else first_token_s,
            per_output_token_s=self._options.latency.per_output_token_s,
            cut=fault == "cut",
            drop=self._drop,
        )

    def _keep(
        self, final: dict[str, Any], background: bool, custom_id: str | None, *, streamed: bool
    ) -> BackgroundJob | None:
        """Store the response (unless ``store: false``); a job for a polled background one."""
        usage = final.get("usage")
        context_tokens = usage["total_tokens"] if isinstance(usage, Mapping) else 0
        job = None
        if background and not streamed:
            now = self._clock()
            timing = self._options.background
            queued_until = now + timing.queued_s
            job = BackgroundJob(final, queued_until, queued_until + timing.in_progress_s)
        if final["store"] is not False:
            self._store.put(
                final["id"],
                Stored(orjson.dumps(final), background, context_tokens, job, custom_id),
            )
        return job

    def poll(self, stored: Stored) -> bytes:
        """``GET /v1/responses/{id}``: the body as of now."""
        return stored.body if stored.job is None else stored.job.view(self._clock())

    def cancel(self, stored: Stored) -> bytes:
        """``POST /v1/responses/{id}/cancel`` of a background response."""
        return stored.body if stored.job is None else stored.job.cancel(self._clock())
