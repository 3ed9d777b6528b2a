"""The request handler: routing, auth, validation, faults, rate limits, answers.

One low-level ``aiohttp.web.Server`` handler with table routing instead of an
``Application`` router: the fake must never be the bottleneck of a client
benchmark, and a dict lookup plus one ``split`` is all the routing it needs.

Order of checks on a model request (``POST /v1/responses``,
``/v1/chat/completions``, ``/v1/embeddings``), each returning early:
auth (401) -> JSON (400) -> validation (400/404) -> fault draw -> quota
(429 ``insufficient_quota``) -> rate limits (429) -> reset / 5xx / stall /
truncated -> success. Validation errors and quota refusals do not touch the
rate limits; everything after admission has been charged. Background and
streamed creates take the same path up to the success, which ``_longrun``
answers (``queued``, or the SSE stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from ratelane._core.tokens import estimate_request_tokens

from . import _bodies, _dialects
from ._batch_routes import PREFIXES as BATCH_PREFIXES
from ._batch_routes import BatchRoutes, drain, stream_file
from ._batches import Batches
from ._config import FAULT_KINDS, TIER_5, ServerOptions
from ._files_store import FileStore
from ._ledger import Ledger, LedgerEntry
from ._longrun import LongAnswers, is_long
from ._ratelimit import Admission, RateLimits
from ._store import ResponseStore, Stored
from ._validate import CHAT_PATH, EMBEDDINGS_PATH, RESPONSES_PATH, Invalid, validate

__all__ = ["FAULT_HEADER", "FakeApp"]

#: Request header forcing one fault on one request: a value of ``FAULT_KINDS``.
FAULT_HEADER = "x-fake-fault"

_JSON = "application/json"
_RESPONSES_PREFIX = RESPONSES_PATH + "/"
_LINGER_RESET = struct.pack("ii", 1, 0)

Handler = Callable[[web.BaseRequest, bytes, float], Awaitable[web.StreamResponse]]


def _drop_connection(request: web.BaseRequest) -> None:
    """Close the connection with a TCP reset and no answer at all."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER 0 makes close() send RST, which clients see as "connection reset".
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def _retry_count(request: web.BaseRequest) -> int | None:
    value = request.headers.get("x-stainless-retry-count")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _custom_id(body: Mapping[str, Any]) -> str | None:
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        custom_id = metadata.get("custom_id")
        if isinstance(custom_id, str):
            return custom_id
    return None


class FakeApp:
    """State and handler of one fake server; lives on one event loop."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        seed = options.seed
        self.limiter = RateLimits(
            rpm=options.rpm,
            tpm=options.tpm,
            quantum_s=options.quantum_s,
            clock=options.clock,
            window=options.window,
            window_offset_s=options.window_offset_s,
            first_window_used=options.first_window_used,
            dialect=options.limit_dialect if options.rate_limit_headers else None,
        )
        self.ledger = Ledger(limit=options.ledger_limit)
        self.store = ResponseStore(options.store_limit)
        self._clock = options.clock
        self._ids = _bodies.IdMaker(seed)
        self._fault_random = random.Random(f"faults-{seed}").random
        self._latency_random = random.Random(f"latency-{seed}")
        self._auth = f"Bearer {options.api_key}"
        self._headers = {
            "Content-Type": _JSON,
            "openai-version": "2020-10-01",
            "openai-organization": options.organization,
        }
        self.long = LongAnswers(options, self.store, self._ids, self._latency, _drop_connection)
        self._model_routes: dict[str, Handler] = {
            RESPONSES_PATH: self._create,
            CHAT_PATH: self._create,
            EMBEDDINGS_PATH: self._create,
        }
        self.batches = Batches(
            options.batches,
            FileStore(),
            self.answer_line,
            seed=seed,
            organization=options.organization,
        )
        self._batch_routes = BatchRoutes(self.batches)

    # -- plumbing ------------------------------------------------------------

    def _reply(
        self,
        status: int,
        body: bytes,
        request_id: str,
        started: float,
        extra: Mapping[str, str] | None = None,
    ) -> web.Response:
        headers = self._answer_headers(request_id, started, extra)
        if status >= 400 and self.options.error_body == "text":
            headers["Content-Type"] = "text/plain; charset=utf-8"
            body = _dialects.text_error_body(body, status)
        return web.Response(status=status, body=body, headers=headers)

    def _answer_headers(
        self, request_id: str, started: float, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = self._headers.copy()
        headers[self.options.request_id_header] = request_id
        headers["openai-processing-ms"] = str(int((time.perf_counter() - started) * 1000))
        if extra:
            headers.update(extra)
        return headers

    def _record(
        self,
        request: web.BaseRequest,
        raw: bytes,
        status: int,
        request_id: str,
        *,
        model: str | None = None,
        custom_id: str | None = None,
        fault: str | None = None,
        tokens: int = 0,
        error_code: str | None = None,
    ) -> None:
        self.ledger.record(
            LedgerEntry(
                self._clock(),
                request.method,
                request.path,
                status,
                request_id,
                model,
                custom_id,
                hashlib.blake2b(raw, digest_size=16).hexdigest(),
                fault,
                tokens,
                _retry_count(request),
                error_code,
            )
        )

    def _latency(self, output_tokens: int) -> float:
        latency = self.options.latency
        delay = latency.seconds
        if latency.sigma and delay:
            delay *= math.exp(latency.sigma * self._latency_random.gauss(0.0, 1.0))
        return delay + latency.per_output_token_s * output_tokens

    # -- entry point ---------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        path = request.path
        if path.startswith(BATCH_PREFIXES):
            return await self._batch_api(request, started)
        raw = await request.read()
        method = request.method
        if method == "POST":
            route = self._model_routes.get(path)
            if route is not None:
                return await route(request, raw, started)
        if path.startswith(_RESPONSES_PREFIX):
            parts = path[len(_RESPONSES_PREFIX) :].split("/")
            if len(parts) == 1 and method in ("GET", "DELETE"):
                return self._by_id(request, raw, started, parts[0])
            if len(parts) == 2 and parts[1] == "cancel" and method == "POST":
                return self._by_id(request, raw, started, parts[0])
        if path.startswith("/_fake/"):
            return self._admin(method, path, raw, request)
        request_id = self._ids.request_id()
        self._record(request, raw, 404, request_id)
        return self._reply(404, _bodies.invalid_url(method, path), request_id, started)

    # -- auth ----------------------------------------------------------------

    def _unauthorized(self, request: web.BaseRequest) -> tuple[bytes, str | None] | None:
        """``None`` when the key is right, else the 401 body and its code."""
        header = request.headers.get("Authorization")
        if header == self._auth:
            return None
        if not header:
            return _bodies.MISSING_KEY_401, None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _bodies.MISSING_KEY_401, None
        return _bodies.invalid_key(key.strip()), "invalid_api_key"

    # -- model endpoints -----------------------------------------------------

    async def _create(
        self, request: web.BaseRequest, raw: bytes, started: float
    ) -> web.StreamResponse:
        path = request.path
        request_id = self._ids.request_id()
        refused = self._unauthorized(request)
        if refused is not None:
            self._record(request, raw, 401, request_id, error_code=refused[1])
            return self._reply(401, refused[0], request_id, started)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._record(request, raw, 400, request_id)
            return self._reply(400, _bodies.INVALID_JSON_400, request_id, started)
        is_mapping = isinstance(body, dict)
        custom_id = _custom_id(body) if is_mapping else None
        raw_model = body.get("model") if is_mapping else None
        model = raw_model if isinstance(raw_model, str) else None
        stream_fault = None
        try:
            previous = self._check(path, body)
            if is_long(path, body):
                stream_fault = self.long.check(request, body)
            fault = self._pick_fault(request)
        except Invalid as invalid:
            self._record(
                request,
                raw,
                invalid.status,
                request_id,
                model=model,
                custom_id=custom_id,
                error_code=invalid.code,
            )
            error_body = invalid.body
            if (
                invalid.code == "unsupported_parameter"
                and self.options.unsupported_params != "openai"
            ):
                error_body = _dialects.litellm_unsupported(error_body, model=model or "", body=body)
            return self._reply(invalid.status, error_body, request_id, started)
        assert model is not None  # validate() guarantees a string model
        if fault == "quota":
            self._record(
                request,
                raw,
                429,
                request_id,
                model=model,
                custom_id=custom_id,
                fault=fault,
                error_code="insufficient_quota",
            )
            return self._reply(
                429,
                _bodies.INSUFFICIENT_QUOTA_429,
                request_id,
                started,
                self.limiter.headers(model),
            )
        tokens = estimate_request_tokens(body, path=path)
        admission = self.limiter.admit(tokens, model)
        if not admission.admitted:
            self._record(
                request,
                raw,
                429,
                request_id,
                model=model,
                custom_id=custom_id,
                error_code="rate_limit_exceeded",
            )
            return self._rate_limited(admission, model, request_id, started)
        if fault == "reset":
            self._record(
                request,
                raw,
                0,
                request_id,
                model=model,
                custom_id=custom_id,
                fault=fault,
                tokens=tokens,
            )
            _drop_connection(request)
            return web.Response(status=500)
        if fault in ("500", "502", "503"):
            status = int(fault)
            self._record(
                request,
                raw,
                status,
                request_id,
                model=model,
                custom_id=custom_id,
                fault=fault,
                tokens=tokens,
                error_code=_ERROR_CODES[status],
            )
            delay = self._latency(0)
            if delay:
                await asyncio.sleep(delay)
            return self._reply(
                status, _ERROR_BODIES[status], request_id, started, admission.headers
            )
        if is_long(path, body):
            dropped = fault == "stall" and self.options.faults.stall_then == "drop"
            self._record(
                request,
                raw,
                0 if dropped else 200,
                request_id,
                model=model,
                custom_id=custom_id,
                fault=fault if stream_fault is None else f"stream_{stream_fault}",
                tokens=tokens,
            )
            return await self.long.answer(
                request,
                body,
                path=path,
                context_tokens=0 if previous is None else previous.context_tokens,
                custom_id=custom_id,
                headers=self._answer_headers(request_id, started, admission.headers),
                fault=fault,
                stream_fault=stream_fault,
            )
        payload, output_tokens = self._succeed(path, body, previous)
        drop = fault == "stall" and self.options.faults.stall_then == "drop"
        self._record(
            request,
            raw,
            0 if drop else 200,
            request_id,
            model=model,
            custom_id=custom_id,
            fault=fault,
            tokens=tokens,
        )
        if fault == "stall":
            await asyncio.sleep(self.options.faults.stall_s)
            if drop:
                _drop_connection(request)
                return web.Response(status=500)
        delay = self._latency(output_tokens)
        if delay:
            await asyncio.sleep(delay)
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        return self._reply(200, payload, request_id, started, admission.headers)

    def _check(self, path: str, body: Any) -> Stored | None:
        """Validate a model request; return the Response it chains onto, if any."""
        validate(path, body, self.options)
        previous_id = body.get("previous_response_id") if path == RESPONSES_PATH else None
        if previous_id is None:
            return None
        previous = self.store.get(previous_id)
        if previous is None:
            raise Invalid(
                404, _bodies.previous_not_found(previous_id), "previous_response_not_found"
            )
        return previous

    def _pick_fault(self, request: web.BaseRequest) -> str | None:
        faults = self.options.faults
        # Draw for every model request, forced or not, so a forced fault does not
        # shift the faults drawn for the requests after it.
        drawn = faults.pick(self._fault_random()) if faults.any_random else None
        forced = request.headers.get(FAULT_HEADER)
        if forced is None:
            return drawn
        if forced not in FAULT_KINDS:
            raise Invalid(
                400,
                _bodies.error(
                    f"Unknown {FAULT_HEADER} value '{forced}'. "
                    f"Use one of: {', '.join(FAULT_KINDS)}.",
                    "invalid_request_error",
                    FAULT_HEADER,
                    None,
                ),
            )
        return forced

    def _rate_limited(
        self, admission: Admission, model: str, request_id: str, started: float
    ) -> web.Response:
        organization = self.options.organization
        if admission.kind == "too_large":
            # Waiting never helps, so no retry-after: the client must shrink the request.
            body = _bodies.request_too_large(
                model=model,
                organization=organization,
                limit=admission.limit,
                requested=admission.requested,
            )
            return self._reply(429, body, request_id, started, admission.headers)
        wait_s = admission.wait_s
        if self.options.limit_dialect == "litellm-key":
            body, extra = _dialects.litellm_rate_limited(
                kind=admission.kind or "requests",
                limit=admission.limit,
                used=admission.used,
                wait_s=wait_s,
            )
            return self._reply(429, body, request_id, started, extra)
        body = _bodies.rate_limited(
            model=model,
            organization=organization,
            kind=admission.kind or "requests",
            limit=admission.limit,
            used=admission.used,
            requested=admission.requested,
            wait_s=wait_s,
        )
        # Whole milliseconds rounded up, so sleeping exactly this long is enough.
        wait_ms = max(1, math.ceil(wait_s * 1000 - 1e-6))
        headers = dict(admission.headers)
        headers["retry-after"] = str(max(1, math.ceil(wait_s - 1e-9)))
        headers["retry-after-ms"] = str(wait_ms)
        return self._reply(429, body, request_id, started, headers)

    def _succeed(self, path: str, body: Any, previous: Stored | None) -> tuple[bytes, int]:
        """The 200 payload and its output tokens; stores Responses unless ``store`` is false."""
        now = int(time.time())
        model = body["model"]
        reasoning = self.options.is_reasoning_model(model)
        if path == RESPONSES_PATH:
            response = _bodies.response_object(
                body,
                ids=self._ids,
                now=now,
                reasoning_model=reasoning,
                context_tokens=0 if previous is None else previous.context_tokens,
            )
            payload = orjson.dumps(response)
            usage = response["usage"]
            if response["store"] is not False:
                self.store.put(
                    response["id"],
                    Stored(payload, response["background"], usage["total_tokens"]),
                )
            return payload, usage["output_tokens"]
        if path == CHAT_PATH:
            completion = _bodies.chat_completion(
                body, ids=self._ids, now=now, reasoning_model=reasoning
            )
            return orjson.dumps(completion), completion["usage"]["completion_tokens"]
        result = _bodies.embeddings(body, default_dimensions=self.options.embedding_dimensions)
        return orjson.dumps(result), 0

    # -- retrieve / delete / cancel -------------------------------------------

    def _by_id(
        self, request: web.BaseRequest, raw: bytes, started: float, response_id: str
    ) -> web.Response:
        request_id = self._ids.request_id()
        refused = self._unauthorized(request)
        if refused is not None:
            self._record(request, raw, 401, request_id, error_code=refused[1])
            return self._reply(401, refused[0], request_id, started)
        stored = self.store.get(response_id)
        if stored is None:
            self._record(request, raw, 404, request_id)
            return self._reply(404, _bodies.response_not_found(response_id), request_id, started)
        if request.method == "GET":
            status, body = 200, self.long.poll(stored)
        elif request.method == "DELETE":
            self.store.delete(response_id)
            status = 200
            body = orjson.dumps({"id": response_id, "object": "response", "deleted": True})
        elif stored.background:
            # Cancels a running one; a finished one comes back unchanged, like the real API.
            status, body = 200, self.long.cancel(stored)
        else:
            status, body = 400, _bodies.CANCEL_SYNC_400
        self._record(request, raw, status, request_id, custom_id=stored.custom_id)
        return self._reply(status, body, request_id, started)

    # -- Batch API: files and batches (see _batch_routes, _batches) -------------

    async def _batch_api(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        request_id = self._ids.request_id()
        refused = self._unauthorized(request)
        if refused is not None:
            await drain(request)
            self._record(request, b"", 401, request_id, error_code=refused[1])
            return self._reply(401, refused[0], request_id, started)
        outcome = await self._batch_routes.dispatch(request)
        self.ledger.record(
            LedgerEntry(
                self._clock(),
                request.method,
                request.path,
                outcome.status,
                request_id,
                body_digest=outcome.digest or "",
                error_code=outcome.error_code,
            )
        )
        if outcome.file is not None:
            headers = {**self._headers, "x-request-id": request_id}
            return await stream_file(request, outcome.file, headers)
        return self._reply(outcome.status, outcome.body, request_id, started)

    def answer_line(self, path: str, body: Any) -> tuple[int, bytes, int]:
        """One Batch input line: the checks and bodies of a real-time request, no limits/faults.

        Returns the status, the body bytes and the output tokens of a success.
        """
        try:
            previous = self._check(path, body)
        except Invalid as invalid:
            return invalid.status, invalid.body, 0
        payload, output_tokens = self._succeed(path, body, previous)
        return 200, payload, output_tokens

    # -- admin ---------------------------------------------------------------

    def _admin(self, method: str, path: str, raw: bytes, request: web.BaseRequest) -> web.Response:
        """``POST /_fake/limits``, ``GET /_fake/ledger``, ``POST /_fake/reset``; no auth."""
        if path.startswith("/_fake/batches"):
            outcome = self._batch_routes.admin(method, path)
            if outcome is not None:
                return _admin_json(orjson.loads(outcome.body), status=outcome.status)
        try:
            if method == "POST" and path == "/_fake/limits":
                update = orjson.loads(raw or b"{}")
                if not isinstance(update, dict):
                    raise ValueError('the body must be a JSON object like {"rpm": 60}')
                rpm, tpm = self.limiter.spec
                self.limiter.set_limits(
                    rpm=_limit_from_json(update.get("rpm", rpm)),
                    tpm=_limit_from_json(update.get("tpm", tpm)),
                )
                rpm, tpm = self.limiter.spec
                return _admin_json({"rpm": _limit_to_json(rpm), "tpm": _limit_to_json(tpm)})
            if method == "GET" and path == "/_fake/ledger":
                bucket_s = float(request.query.get("bucket_s", "1.0"))
                return _admin_json(self.ledger.summary(bucket_s))
            if method == "POST" and path == "/_fake/reset":
                self.ledger.clear()
                return _admin_json({"ok": True})
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _admin_json({"error": str(exc)}, status=400)
        return _admin_json({"error": f"unknown admin endpoint {method} {path}"}, status=404)


def _limit_from_json(value: Any) -> Any:
    """``TIER_5`` travels as the string ``"tier-5"`` in admin JSON."""
    return TIER_5 if value == TIER_5.value else value


def _limit_to_json(value: Any) -> Any:
    return TIER_5.value if value is TIER_5 else value


def _admin_json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type=_JSON)


_ERROR_BODIES = {
    500: _bodies.SERVER_ERROR_500,
    502: _bodies.BAD_GATEWAY_502,
    503: _bodies.OVERLOADED_503,
}
_ERROR_CODES: dict[int, str | None] = {500: None, 502: None, 503: "server_is_overloaded"}
