"""Finding uploads a run made but died before recording (``GET /v1/files``).

The sidecar is saved after ``POST /v1/files`` answers; a run killed in
between leaves a chunk ``planned`` whose file is already on the server. So
every chunk is uploaded under a name that says which run and which chunk it
is, ``ratelane-<run token>-chunk-00001.jsonl`` (the token is in the sidecar
before the first upload), and a run that re-attaches to ``planned`` chunks
first looks for files of purpose ``batch`` with that name and the chunk's
byte size::

    newest page first (order=desc), page after page until
        every name is found, or no page is left, or
        the page reaches files created before the chunks were planned, or
        max_pages pages were read (an organization with a huge file list)

What is not found is uploaded (at worst a second copy of a file; a batch
is only ever created from the file id the sidecar recorded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from ratelane._http.batch_api import FileInfo, FilePage

__all__ = ["CLOCK_SKEW_S", "find_uploads"]

#: How far the server's clock may be behind ours when comparing ``created_at``.
CLOCK_SKEW_S = 3600.0
_MAX_PAGES = 20


async def find_uploads(
    list_page: Callable[[str | None], Awaitable[FilePage]],
    wanted: Mapping[str, int],
    *,
    not_before: float | None = None,
    max_pages: int = _MAX_PAGES,
) -> dict[str, FileInfo]:
    """The newest file for each ``name -> size`` in ``wanted`` with that name and size.

    ``list_page(after)`` returns one page of files, newest first, following the
    file id ``after`` (``None``: the first page). ``not_before`` (Unix time) ends
    the search at files created earlier (minus :data:`CLOCK_SKEW_S`).
    """
    found: dict[str, FileInfo] = {}
    after: str | None = None
    cutoff = None if not_before is None else not_before - CLOCK_SKEW_S
    for _ in range(max_pages):
        if len(found) == len(wanted):
            break
        page = await list_page(after)
        for info in page.files:
            name = info.filename or ""
            if name in wanted and name not in found and info.bytes == wanted[name]:
                found[name] = info
        oldest = page.files[-1].created_at if page.files else None
        if not page.has_more or (cutoff is not None and oldest is not None and oldest < cutoff):
            break
        after = page.last_id
    return found
