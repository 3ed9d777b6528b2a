"""HTTP side of the fake Batch API: ``/v1/files`` and ``/v1/batches``.

Routes (authentication is checked by the caller, ``FakeApp``):

- ``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files``
  (``purpose``, ``order``, ``after``, ``limit``), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (streamed from disk), ``DELETE /v1/files/{id}``;
- ``POST /v1/batches``, ``GET /v1/batches`` (``limit``, ``after``),
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``;
- admin, no auth: ``GET /_fake/batches`` (every upload with its digest, every
  creation), ``POST /_fake/batches/{id}/expire``.

Request bodies are read here (an upload is streamed to disk, never held whole).
Error bodies use the common envelope; texts the real service is not known to
send are marked in the builders below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from . import _bodies
from ._batches import TERMINAL, Batch, Batches
from ._files_store import StoredFile, TooLarge
from ._validate import CHAT_PATH, EMBEDDINGS_PATH, RESPONSES_PATH

__all__ = ["PREFIXES", "BatchRoutes", "Outcome", "drain", "stream_file"]

PREFIXES = ("/v1/files", "/v1/batches")
_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
#: The endpoints this fake can answer in a batch (the real service adds a few more).
_ENDPOINTS = (RESPONSES_PATH, CHAT_PATH, EMBEDDINGS_PATH)
_CHUNK = 1 << 16
#: ``GET /v1/files``: the largest and the default page (protocol notes 6.3).
_MAX_FILES_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer: a JSON ``body``, or a ``file`` to stream; and what to record."""

    status: int
    body: bytes = b""
    file: StoredFile | None = None
    error_code: str | None = None
    digest: str | None = None  # of an uploaded file, for the ledger
    model: str | None = None


def _invalid(message: str, param: str | None = None, code: str | None = None) -> Outcome:
    return Outcome(
        400, _bodies.error(message, "invalid_request_error", param, code), error_code=code
    )


def _missing(param: str) -> Outcome:
    return _invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _no_file(file_id: str) -> Outcome:
    # Real text of the files API's 404.
    body = _bodies.error(f"No such File object: {file_id}", "invalid_request_error", "id")
    return Outcome(404, body)


def _no_batch(batch_id: str) -> Outcome:
    # Wording not verified against the real service.
    body = _bodies.error(f"No batch found with id '{batch_id}'.", "invalid_request_error", "id")
    return Outcome(404, body)


def _ok(value: Any) -> Outcome:
    return Outcome(200, orjson.dumps(value))


class BatchRoutes:
    """Dispatch one request of the Batch API to :class:`Batches` and the file store."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches
        self.files = batches.files

    async def dispatch(self, request: web.BaseRequest) -> Outcome:
        method = request.method
        parts = request.path.strip("/").split("/")[1:]  # drop "v1"
        kind, rest = parts[0], parts[1:]
        if kind == "files":
            if method == "POST" and not rest:
                return await self._upload(request)
            if method == "GET" and not rest:
                return self._list_files(request)
            if len(rest) == 1 and method in ("GET", "DELETE"):
                return self._file(method, rest[0])
            if len(rest) == 2 and rest[1] == "content" and method == "GET":
                stored = self.files.get(rest[0])
                return _no_file(rest[0]) if stored is None else Outcome(200, file=stored)
        elif kind == "batches":
            if not rest and method == "POST":
                return self._create(await request.read())
            if not rest and method == "GET":
                return self._list(request)
            batch = self.batches.get(rest[0]) if rest else None
            if len(rest) == 1 and method == "GET":
                return _no_batch(rest[0]) if batch is None else _ok(batch.wire())
            if len(rest) == 2 and rest[1] == "cancel" and method == "POST":
                return _no_batch(rest[0]) if batch is None else self._cancel(batch)
        await drain(request)
        return Outcome(404, _bodies.invalid_url(method, request.path))

    def admin(self, method: str, path: str) -> Outcome | None:
        """``GET /_fake/batches``: the record of uploads and creations.

        ``POST /_fake/batches/{id}/expire``: the batch expires at its next line.
        """
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 2:
            return _ok(
                {
                    "uploads": [asdict(upload) for upload in self.batches.uploads],
                    "creations": [asdict(creation) for creation in self.batches.creations],
                }
            )
        if method == "POST" and len(parts) == 4 and parts[1] == "batches" and parts[3] == "expire":
            batch = self.batches.get(parts[2])
            if batch is None:
                return _no_batch(parts[2])
            self.batches.expire(batch)
            return _ok(batch.wire())
        return None

    # -- files -------------------------------------------------------------------

    async def _upload(self, request: web.BaseRequest) -> Outcome:
        if not request.content_type.startswith("multipart/"):
            await drain(request)
            return _invalid(
                "The file upload must be multipart/form-data with 'file' and 'purpose' fields.",
                None,
                "invalid_content_type",
            )
        reader = await request.multipart()
        purpose: str | None = None
        stored: StoredFile | None = None
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue  # a nested multipart: not something the real API takes either
                if part.name == "file" and stored is None:
                    stored = await self.files.receive(
                        part,
                        file_id=self.batches.file_id(),
                        filename=part.filename or "upload",
                        max_bytes=self.batches.options.max_upload_bytes,
                    )
                elif part.name == "purpose":
                    purpose = await part.text()
                else:
                    while await part.read_chunk(_CHUNK):
                        pass
        except TooLarge:
            limit = self.batches.options.max_upload_bytes
            return _invalid(f"File is too large: the limit is {limit:,} bytes.", "file")
        problem = self._upload_problem(stored, purpose)
        if problem is not None:
            if stored is not None:
                stored.path.unlink(missing_ok=True)
            return problem
        assert stored is not None
        assert purpose is not None
        stored.purpose = purpose
        self.files.add(stored)
        self.batches.record_upload(stored)
        return Outcome(200, orjson.dumps(stored.wire()), digest=stored.digest)

    @staticmethod
    def _upload_problem(stored: StoredFile | None, purpose: str | None) -> Outcome | None:
        if stored is None:
            return _missing("file")
        if purpose is None:
            return _missing("purpose")
        if purpose not in _PURPOSES:
            return _invalid(
                f"Invalid value for 'purpose': '{purpose}'. "
                f"Supported values are: {', '.join(sorted(_PURPOSES))}.",
                "purpose",
                "invalid_value",
            )
        if purpose == "batch" and not stored.filename.endswith(".jsonl"):
            # The real service's text for a batch file without the .jsonl extension.
            return _invalid("Invalid file format for Batch API. Must be .jsonl", "file")
        return None

    def _list_files(self, request: web.BaseRequest) -> Outcome:
        """One page of files, newest first unless ``order=asc``, as the real ``GET /v1/files``."""
        query = request.query
        try:
            limit = int(query.get("limit", str(_MAX_FILES_PAGE)))
        except ValueError:
            limit = 0
        if not 1 <= limit <= _MAX_FILES_PAGE:
            return _invalid(
                f"Invalid 'limit': expected an integer from 1 to {_MAX_FILES_PAGE:,}.", "limit"
            )
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _invalid(
                f"Invalid value for 'order': {order!r}. Supported values are: 'asc' and 'desc'.",
                "order",
                "invalid_value",
            )
        files = self.files.oldest_first()
        if order == "desc":
            files.reverse()
        purpose = query.get("purpose")
        if purpose is not None:
            files = [stored for stored in files if stored.purpose == purpose]
        return _ok(_page(files, query.get("after"), limit))

    def _file(self, method: str, file_id: str) -> Outcome:
        stored = self.files.get(file_id)
        if stored is None:
            return _no_file(file_id)
        if method == "GET":
            return _ok(stored.wire())
        self.files.delete(file_id)
        return _ok({"id": file_id, "object": "file", "deleted": True})

    # -- batches -------------------------------------------------------------------

    def _create(self, raw: bytes) -> Outcome:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Outcome(400, _bodies.INVALID_JSON_400)
        if not isinstance(body, dict):
            return Outcome(400, _bodies.INVALID_JSON_400)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                return _missing(name)
        endpoint, window = body["endpoint"], body["completion_window"]
        if endpoint not in _ENDPOINTS:
            return _invalid(
                f"Invalid value for 'endpoint': {endpoint!r}. This fake server runs batches "
                f"for {', '.join(_ENDPOINTS)}.",
                "endpoint",
                "invalid_value",
            )
        if window != "24h":
            return _invalid(
                f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'.",
                "completion_window",
                "invalid_value",
            )
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(isinstance(v, str) for v in metadata.values())
        ):
            return _invalid(
                "'metadata' must be an object of at most 16 string values.", "metadata", None
            )
        stored = self.files.get(str(body["input_file_id"]))
        if stored is None:
            return _no_file(str(body["input_file_id"]))
        if stored.purpose != "batch":
            return _invalid(
                f"The input file {stored.id} has purpose '{stored.purpose}'; "
                "a batch needs a file uploaded with purpose 'batch'.",
                "input_file_id",
            )
        batch = self.batches.create(stored, endpoint, metadata)
        return _ok(batch.wire())

    def _list(self, request: web.BaseRequest) -> Outcome:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return _invalid("Invalid 'limit': expected an integer from 1 to 100.", "limit")
        return _ok(_page(self.batches.newest_first(), request.query.get("after"), limit))

    def _cancel(self, batch: Batch) -> Outcome:
        if batch.status in TERMINAL or batch.status == "finalizing":
            # Wording not verified against the real service.
            return _invalid(f"Cannot cancel a batch with status '{batch.status}'.", None, None)
        self.batches.cancel(batch)
        return _ok(batch.wire())


def _page(items: list[Batch] | list[StoredFile], after: str | None, limit: int) -> dict[str, Any]:
    """A cursor page: the ``limit`` items following the one whose id is ``after``."""
    if after is not None:
        ids = [item.id for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": [item.wire() for item in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(items) > limit,
    }


async def drain(request: web.BaseRequest) -> None:
    """Read and drop a request body in chunks (a refused upload may be 200 MB)."""
    while await request.content.readany():
        pass


async def stream_file(
    request: web.BaseRequest, stored: StoredFile, headers: dict[str, str]
) -> web.StreamResponse:
    """Send a stored file's bytes in chunks, never whole in memory."""
    headers = {**headers, "Content-Type": "application/octet-stream"}
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = stored.path.stat().st_size
    await response.prepare(request)
    with stored.path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            await response.write(chunk)
    await response.write_eof()
    return response
