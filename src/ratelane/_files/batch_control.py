"""Looking at and cancelling a Batch API mode run's batches, from its sidecar.

Neither takes OUTPUT's lock nor writes the sidecar: a run may be polling the
same batches meanwhile, and it sees a cancel on its next poll (then merges
what was delivered and resubmits the rest).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ratelane._core.errors import APIError, ConfigurationError
from ratelane._http.batch_api import TERMINAL_STATUSES, BatchAPI, BatchInfo

from .batch_mode import batch_transport
from .batch_state import BatchState, Chunk, sidecar_path
from .file_run import FileRunOptions

__all__ = ["BatchView", "cancel_batches", "eta_s", "query_batches"]

StrPath = str | os.PathLike[str]
#: Statuses a cancel cannot change (the service answers 400).
_UNCANCELLABLE = TERMINAL_STATUSES | {"finalizing"}


@dataclass(frozen=True, slots=True)
class BatchView:
    """One chunk of the run and, when it has a batch still to collect, the batch now."""

    chunk: Chunk
    info: BatchInfo | None

    @property
    def status(self) -> str:
        if self.chunk.merged:
            return f"collected ({self.chunk.outcome})"
        return self.info.status if self.info is not None else self.chunk.status


def eta_s(info: BatchInfo, now_s: float) -> float | None:
    """Seconds until ``info`` finishes at its rate so far; ``None`` before the first answer.

    ``eta = elapsed_in_progress * (total - done) / done``.
    """
    counts = info.request_counts
    done = counts.completed + counts.failed
    started = info.in_progress_at
    if info.is_terminal:
        return 0.0
    if not done or started is None or not counts.total:
        return None
    return max(0.0, now_s - started) * (counts.total - done) / done


def _state(output: StrPath) -> BatchState:
    state = BatchState.load(output)
    if state is None:
        raise ConfigurationError(
            f"{os.fspath(output)} has no batches ({sidecar_path(output)} does not exist). "
            "HINT: start them with `ratelane run INPUT -o OUTPUT --via batch`"
        )
    return state


async def query_batches(output: StrPath, options: FileRunOptions) -> list[BatchView]:
    """Every chunk of the run on ``output``; batches not collected yet are retrieved now."""
    state = _state(output)
    views = []
    async with batch_transport(options) as transport:
        api = BatchAPI(transport)
        for chunk in state.chunks:
            info = None
            if chunk.batch_id is not None and not chunk.merged:
                info = await api.retrieve_batch(chunk.batch_id)
            views.append(BatchView(chunk, info))
    return views


async def cancel_batches(output: StrPath, options: FileRunOptions) -> list[BatchView]:
    """Cancel every batch of the run on ``output`` that has not finished; return them."""
    state = _state(output)
    cancelled = []
    async with batch_transport(options) as transport:
        api = BatchAPI(transport)
        for chunk in state.active():
            if chunk.batch_id is None:
                continue
            info = await api.retrieve_batch(chunk.batch_id)
            if info.status in _UNCANCELLABLE:
                continue  # finished or finishing: the next run collects it
            if info.status != "cancelling":
                try:
                    info = await api.cancel_batch(chunk.batch_id)
                except APIError as exc:
                    if exc.status_code != 400:
                        raise
                    continue  # it moved on to finalizing meanwhile
            cancelled.append(BatchView(chunk, info))
    return cancelled
