"""Chains: a request sent only after its parent succeeded, continuing the parent's response.

A child names its parent by ``custom_id`` (a Batch line's top-level
``"previous_custom_id"``, a turn of ``run_conversations``). The scheduler sits
between a run's source of requests and its workers:

- **Release after success.** A child whose parent has a response id (it
  succeeded in this run, or earlier: a resume reads the ids from OUTPUT) is
  handed out at once with ``body.previous_response_id`` set to that id. One
  whose parent is still running is parked, keyed by the parent, and handed out
  when the parent's result arrives. Conversations run concurrently; the turns
  of one run in order.
- **Never block a worker on a parent.** A worker asking for work gets any
  request that can go now (a parked child released, or the next line read);
  it waits only when nothing can be sent until a running request finishes,
  and is woken by that result, not by a timer.
- **A failed parent fails its descendants unsent**, each with
  ``error.code = "parent_failed"`` naming its parent, counted as failed;
  a resume sends the parent again and the chain continues from there.
- When the run stops, the scheduler hands out nothing more; parked children
  stay unsent (resume sends them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from ratelane._core.errors import ConfigurationError
from ratelane._core.models import ErrorInfo, Request, Result, RunStats

__all__ = ["PARENT_FAILED", "ChainScheduler", "continued", "previous_id", "response_id_of"]

PARENT_FAILED = "parent_failed"

Item = tuple[int, Request]
Sink = Callable[[Result], Awaitable[None]]


def continued(request: Request, response_id: str) -> Request:
    """``request`` continuing the response ``response_id`` (``body.previous_response_id``)."""
    body = {**request.body, "previous_response_id": response_id}
    return Request(body, request.custom_id, request.path, request.method)


def _parent_failed(index: int, request: Request, parent: str, why: str) -> Result:
    message = (
        f'not sent: its parent "{parent}" failed ({why}), so there is no response to continue. '
        "HINT: fix the parent (see its own error), then resume: the chain continues from there"
    )
    return Result(
        index, request.custom_id, ok=False, error=ErrorInfo(PARENT_FAILED, message),
        path=request.path,
    )  # fmt: skip


class ChainScheduler:
    """Hands out requests in an order that respects ``parent_of`` (child -> parent custom_id).

    ``response_ids``: parents that already succeeded (custom_id -> response id),
    e.g. read from OUTPUT on resume; the scheduler adds each parent that
    succeeds. ``stats`` counts the children failed unsent; ``stopping()`` says
    the run hands out nothing more. Use :meth:`requests` as the run's source
    and :meth:`sink` around its sink.
    """

    def __init__(
        self,
        parent_of: Mapping[str, str],
        *,
        response_ids: Mapping[str, str] | None = None,
        stats: RunStats,
        stopping: Callable[[], bool],
    ) -> None:
        self._parent_of = parent_of
        self._parents = frozenset(parent_of.values())
        self._ids: dict[str, str] = dict(response_ids or {})
        self._failed: dict[str, str] = {}  # a failed parent -> why (its error code)
        self._waiting: dict[str, list[Item]] = {}
        self._ready: deque[Item] = deque()
        self._stats = stats
        self._stopping = stopping
        self._outstanding = 0
        self._changed = asyncio.Event()
        self._sink: Sink | None = None
        #: Children handed out after waiting for their parent, and failed unsent.
        self.released = 0
        self.failed_unsent = 0

    def __repr__(self) -> str:
        return (
            f"<ChainScheduler parents={len(self._parents)} waiting="
            f"{sum(map(len, self._waiting.values()))} ready={len(self._ready)} "
            f"outstanding={self._outstanding} failed_unsent={self.failed_unsent}>"
        )

    @property
    def waiting(self) -> int:
        """Children parked until their parent's result."""
        return sum(map(len, self._waiting.values()))

    @property
    def held(self) -> int:
        """Lines read but not handed to the engine: parked, or released and not yet out."""
        return self.waiting + len(self._ready)

    def wake(self) -> None:
        """The run is stopping: a worker waiting for a parent's result looks again."""
        self._changed.set()

    # -- the source ---------------------------------------------------------------------
    async def requests(self, source: Iterator[Item]) -> AsyncIterator[Item]:
        """The requests of ``source``, each child after its parent succeeded."""
        exhausted = False
        while not self._stopping():
            if self._ready:
                self._outstanding += 1
                self.released += 1
                yield self._ready.popleft()
                continue
            if not exhausted:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    continue
                item = await self._admit(item)
                if item is not None:
                    self._outstanding += 1
                    yield item
                continue
            if not self._waiting or self._outstanding <= 0:
                return  # nothing running could release the parked ones
            self._changed.clear()
            await self._changed.wait()

    async def _admit(self, item: Item) -> Item | None:
        """``item`` ready to send, or ``None`` (parked, or failed because its parent did)."""
        index, request = item
        parent = self._parent_of.get(request.custom_id)
        if parent is None:
            return item
        response_id = self._ids.get(parent)
        if response_id is not None:
            return index, continued(request, response_id)
        why = self._failed.get(parent)
        if why is not None:
            await self._fail_unsent(item, parent, why)
            return None
        self._waiting.setdefault(parent, []).append(item)
        return None

    # -- the sink -----------------------------------------------------------------------
    def sink(self, sink: Sink) -> Sink:
        """``sink``, also releasing (or failing) the children of each result."""
        self._sink = sink
        parents = self._parents

        async def chained(result: Result) -> None:
            self._outstanding -= 1
            await sink(result)
            custom_id = result.custom_id
            if custom_id in parents:
                await self._settled(result)
            self._changed.set()

        return chained

    async def _settled(self, parent: Result) -> None:
        custom_id = parent.custom_id
        response_id = response_id_of(parent.body) if parent.ok else None
        if response_id is not None:
            self._ids[custom_id] = response_id
            for index, request in self._waiting.pop(custom_id, ()):
                self._ready.append((index, continued(request, response_id)))
            return
        error = parent.error
        why = (error.code if error is not None else None) or "no response id"
        self._failed[custom_id] = why
        for item in self._waiting.pop(custom_id, ()):
            await self._fail_unsent(item, custom_id, why)

    async def _fail_unsent(self, item: Item, parent: str, why: str) -> None:
        """Fail ``item`` unsent, then its own parked descendants, depth first."""
        index, request = item
        self.failed_unsent += 1
        self._stats.failed += 1
        if self._sink is not None:
            await self._sink(_parent_failed(index, request, parent, why))
        if request.custom_id in self._parents:
            self._failed[request.custom_id] = PARENT_FAILED
            for child in self._waiting.pop(request.custom_id, ()):
                await self._fail_unsent(child, request.custom_id, PARENT_FAILED)


def previous_id(previous: Result | str) -> str:
    """The response id a follow-up continues: a Result's body ``id``, or the id itself."""
    if isinstance(previous, str):
        response_id: str | None = previous or None
    else:
        response_id = response_id_of(previous.body) if previous.ok else None
    if response_id is None:
        raise ConfigurationError(
            f"previous={previous!r} has no response id to continue. HINT: pass a successful "
            "Result of /v1/responses (or its id, 'resp_...')"
        )
    return response_id


def response_id_of(body: Any) -> str | None:
    """A Responses body's ``id``, when it has one."""
    response_id = body.get("id") if isinstance(body, dict) else None
    return response_id if isinstance(response_id, str) and response_id else None
