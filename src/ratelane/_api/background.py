"""Background mode for ``run_many`` and friends: the ``background=`` and ``journal=`` options.

``background=True`` sends every request with ``"background": true`` and polls
each response to its end (``ratelane._engine.background``). ``journal=PATH``
keeps each created response id in a pending journal
(``ratelane._state.pending``) the moment the create answers: call again with
the same items and journal after a crash, and the requests already created
are re-attached by polling, not created (and paid for) twice. A journal that
still holds ids turns polling on for them even without ``background=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ratelane._engine.background import Background
from ratelane._engine.run import Run
from ratelane._state.pending import PendingJournal

from .options import RunOptions

__all__ = ["BackgroundOption"]


@dataclass(frozen=True, slots=True)
class BackgroundOption:
    """A call's background options, attached to its Run."""

    enabled: bool
    journal: str | os.PathLike[str] | None

    @classmethod
    def of(cls, options: RunOptions) -> BackgroundOption | None:
        """``None`` when the call asks for neither (the run stays on its cheap path)."""
        if not options.background and options.journal is None:
            return None
        return cls(bool(options.background), options.journal)

    def attach(self, run: Run) -> Callable[[], None]:
        """Give ``run`` its poller (and journal); return what closes the journal."""
        journal = PendingJournal(self.journal).open() if self.journal is not None else None
        run.journal = journal
        if self.enabled or (journal is not None and journal.has_pending):
            run.background = Background(enabled=self.enabled, journal=journal, rng=run.engine.rng)
        return journal.close if journal is not None else _nothing


def _nothing() -> None:
    return None
