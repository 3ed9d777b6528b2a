"""Stored Responses for retrieve, delete and ``previous_response_id``: a bounded LRU.

Only Responses created without ``store: false`` are put here, so chaining onto
a ``store: false`` parent meets the same 404 ``previous_response_not_found``
as an unknown id, like the real API (the parent was never kept).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ._background import BackgroundJob

__all__ = ["ResponseStore", "Stored"]


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored Response: its wire bytes, and what chaining onto it costs in input tokens.

    ``job`` is set for a polled background response: its current state comes
    from the job, not from ``body``. ``custom_id`` (``metadata.custom_id`` of
    the create) labels polls and cancels in the ledger.
    """

    body: bytes
    background: bool
    context_tokens: int
    job: BackgroundJob | None = None
    custom_id: str | None = None


class ResponseStore:
    """At most ``limit`` Responses; the least recently used one is evicted first.

    Only the server's event loop touches it, so it takes no lock.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ResponseStore(size={len(self._items)}, limit={self._limit})"

    def put(self, response_id: str, stored: Stored) -> None:
        if self._limit == 0:
            return
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None
