"""Low-level, typed access to the Files and Batches endpoints (the Batch API's wire).

It runs on a Transport's session (its pool, headers, base URL and timeouts)
and uses the same translation of failures: aiohttp errors become TransportError /
RequestTimeout (``translated_errors``), an error status becomes an APIError
with the status, the server's ``code``/``type``/``param`` and the
``x-request-id``. Messages are built from those, never from request headers,
so the key cannot leak. Files travel through disk in chunks both ways: an
upload streams from its path, a download streams to ``dest`` (via a ``.part``
file renamed at the end, so a half download never looks complete).

No retries here: the batch mode decides what to retry (an upload retried
blindly could create a second file).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from ratelane._core.errors import APIError, TransportError

from .transport import Transport, translated_errors

__all__ = [
    "TERMINAL_STATUSES",
    "BatchAPI",
    "BatchError",
    "BatchInfo",
    "FileInfo",
    "FilePage",
    "RequestCounts",
]

#: Statuses after which a batch never changes again.
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
_CHUNK = 1 << 16
_JSON = "application/json"
_ID = "x-request-id"


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class BatchError:
    """One ``errors.data[]`` entry: why validation failed, with the 1-based input ``line``."""

    code: str | None
    message: str
    param: str | None = None
    line: int | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _object(body: Any, kind: str) -> Mapping[str, Any]:
    """``body`` if it is an object with a string ``id``; else TransportError."""
    if not isinstance(body, Mapping) or not isinstance(body.get("id"), str):
        raise TransportError(f"the server's answer is not a {kind} object (no 'id')")
    return body


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What the batch mode needs from a Batch object; unknown fields are ignored."""

    id: str
    status: str
    endpoint: str | None = None
    model: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts = RequestCounts()
    errors: tuple[BatchError, ...] = ()
    created_at: int | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelled_at: int | None = None
    metadata: Mapping[str, str] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_wire(cls, body: Any) -> BatchInfo:
        """Parse a Batch object; raise TransportError when it is not one."""
        body = _object(body, "Batch")
        counts = body.get("request_counts")
        counts = counts if isinstance(counts, Mapping) else {}
        errors = body.get("errors")
        data = errors.get("data") if isinstance(errors, Mapping) else None
        metadata = body.get("metadata")
        return cls(
            id=body["id"],
            status=str(body.get("status")),
            endpoint=_str(body.get("endpoint")),
            model=_str(body.get("model")),
            input_file_id=_str(body.get("input_file_id")),
            output_file_id=_str(body.get("output_file_id")),
            error_file_id=_str(body.get("error_file_id")),
            request_counts=RequestCounts(
                _int(counts.get("total")) or 0,
                _int(counts.get("completed")) or 0,
                _int(counts.get("failed")) or 0,
            ),
            errors=tuple(
                BatchError(
                    _str(item.get("code")),
                    str(item.get("message") or ""),
                    _str(item.get("param")),
                    _int(item.get("line")),
                )
                for item in (data if isinstance(data, list) else [])
                if isinstance(item, Mapping)
            ),
            created_at=_int(body.get("created_at")),
            in_progress_at=_int(body.get("in_progress_at")),
            expires_at=_int(body.get("expires_at")),
            completed_at=_int(body.get("completed_at")),
            failed_at=_int(body.get("failed_at")),
            expired_at=_int(body.get("expired_at")),
            cancelled_at=_int(body.get("cancelled_at")),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the batch mode needs from a File object; unknown fields are ignored."""

    id: str
    filename: str | None = None
    bytes: int | None = None
    purpose: str | None = None
    created_at: int | None = None

    @classmethod
    def from_wire(cls, body: Any) -> FileInfo:
        """Parse a File object; raise TransportError when it is not one."""
        body = _object(body, "File")
        return cls(
            id=body["id"],
            filename=_str(body.get("filename")),
            bytes=_int(body.get("bytes")),
            purpose=_str(body.get("purpose")),
            created_at=_int(body.get("created_at")),
        )


@dataclass(frozen=True, slots=True)
class FilePage:
    """One page of ``GET /v1/files``; pass ``last_id`` as ``after`` for the next one."""

    files: tuple[FileInfo, ...]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        return self.files[-1].id if self.files else None


def api_error(status: int, raw: bytes, request_id: str | None, what: str) -> APIError:
    """The APIError for an error answer to ``what`` (e.g. ``"upload of in.jsonl"``)."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    envelope = body.get("error") if isinstance(body, Mapping) else None
    error: Mapping[str, Any] = envelope if isinstance(envelope, Mapping) else {}
    message = _str(error.get("message")) or f"HTTP {status}"
    code = error.get("code")
    return APIError(
        f"{what} failed: {message}",
        status_code=status,
        code=None if code is None else str(code),
        error_type=_str(error.get("type")),
        param=_str(error.get("param")),
        request_id=request_id,
        body=body,
    )


class BatchAPI:
    """The Files and Batches endpoints over a running :class:`Transport`'s session.

    ::

        async with Transport(base_url=..., api_key=...) as transport:
            api = BatchAPI(transport)
            file_id = await api.upload_file("chunk-1.jsonl")
            batch = await api.create_batch(file_id, "/v1/responses")

    Sharing the Transport shares its connection pool, headers and timeouts
    (``timeout_s`` bounds a whole download too: raise it for huge files).
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"<BatchAPI {self._transport!r}>"

    async def _json(
        self, method: str, path: str, what: str, payload: Any = None, form: Any = None
    ) -> Any:
        url = self._transport.url_for(path)
        if form is not None:
            data, content_type = form, form.content_type
        else:
            data, content_type = (None if payload is None else orjson.dumps(payload)), _JSON
        with translated_errors(url):
            async with self._transport.session.request(
                method, url, data=data, headers={"Content-Type": content_type}
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise api_error(response.status, raw, response.headers.get(_ID), what)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransportError(f"{what}: the answer from {url} is not JSON") from None

    # -- files -------------------------------------------------------------------

    async def upload_file(
        self, path: str | os.PathLike[str], *, purpose: str = "batch", filename: str | None = None
    ) -> str:
        """Upload a file (multipart, streamed from disk); return its ``file-...`` id.

        ``filename`` is the name the server records (default: the file's own name).
        """
        source = Path(path)
        name = filename or source.name
        handle = await asyncio.to_thread(source.open, "rb")
        try:
            with aiohttp.MultipartWriter("form-data") as form:
                form.append(purpose).set_content_disposition("form-data", name="purpose")
                part = form.append(handle, {"Content-Type": "application/jsonl"})
                part.set_content_disposition("form-data", name="file", filename=name)
                body = await self._json("POST", "/v1/files", f"upload of {name}", form=form)
        finally:
            handle.close()
        file_id = body.get("id") if isinstance(body, Mapping) else None
        if not isinstance(file_id, str):
            raise TransportError(f"upload of {name}: the answer has no file id")
        return file_id

    async def download_file(self, file_id: str, dest: str | os.PathLike[str]) -> int:
        """Stream a file's content to ``dest`` in chunks; return the number of bytes."""
        target = Path(dest)
        partial = target.with_name(target.name + ".part")
        url = self._transport.url_for(f"/v1/files/{file_id}/content")
        what = f"download of {file_id}"
        written = 0
        try:
            with translated_errors(url):
                async with self._transport.session.get(url) as response:
                    if response.status >= 400:
                        raw = await response.read()
                        raise api_error(response.status, raw, response.headers.get(_ID), what)
                    expected = response.content_length
                    with partial.open("wb") as out:
                        async for chunk in response.content.iter_chunked(_CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                        out.flush()
                        os.fsync(out.fileno())
            if expected is not None and written != expected:
                raise TransportError(f"{what} stopped at {written:,} of {expected:,} bytes")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return written

    async def list_files(
        self,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str = "desc",
    ) -> FilePage:
        """One page of the organization's files (newest first unless ``order="asc"``).

        ``purpose`` keeps one purpose only (``"batch"``: uploaded batch input files);
        ``limit`` is 1-10,000 (the service's default is 10,000).
        """
        query: dict[str, str] = {"order": order}
        if purpose is not None:
            query["purpose"] = purpose
        if after is not None:
            query["after"] = after
        if limit is not None:
            query["limit"] = str(limit)
        path = "/v1/files?" + urlencode(query)
        body = await self._json("GET", path, "list of files")
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list):
            raise TransportError("list of files: the answer has no 'data' list")
        files = tuple(FileInfo.from_wire(item) for item in data)
        return FilePage(files, bool(body.get("has_more")) and bool(files))

    async def delete_file(self, file_id: str) -> None:
        await self._json("DELETE", f"/v1/files/{file_id}", f"delete of {file_id}")

    # -- batches -------------------------------------------------------------------

    async def create_batch(
        self,
        file_id: str,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchInfo:
        payload: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata is not None:
            payload["metadata"] = dict(metadata)
        what = f"batch creation for {file_id}"
        return BatchInfo.from_wire(await self._json("POST", "/v1/batches", what, payload))

    async def retrieve_batch(self, batch_id: str) -> BatchInfo:
        body = await self._json("GET", f"/v1/batches/{batch_id}", f"retrieve of {batch_id}")
        return BatchInfo.from_wire(body)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        what = f"cancel of {batch_id}"
        return BatchInfo.from_wire(await self._json("POST", f"/v1/batches/{batch_id}/cancel", what))

    async def list_batches(self, *, limit: int = 100) -> list[BatchInfo]:
        """The organization's newest batches (one page of at most ``limit``, 1-100)."""
        body = await self._json("GET", f"/v1/batches?limit={limit}", "list of batches")
        data = body.get("data") if isinstance(body, Mapping) else None
        return (
            [BatchInfo.from_wire(item) for item in data if isinstance(item, Mapping)]
            if isinstance(data, list)
            else []
        )
