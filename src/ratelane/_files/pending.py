"""A file run's pending journal: ``<OUTPUT>.pending.jsonl``, and background mode wired in.

The journal itself (format, crash safety, re-attach) is
``ratelane._state.pending``; this module decides, for one file run, which
entries still matter and whether the run polls:

- entries whose ``custom_id`` already has a success in OUTPUT are dropped
  when the journal is opened (compaction), so the file stays as small as the
  work in progress;
- the run gets a background poller when ``background=True`` asks for it or
  when the journal still holds ids from an earlier run (they are re-attached,
  even if this run was started without the option); a body with
  ``"background": true`` gets one on first use, with the same journal.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

from ratelane._engine.background import Background
from ratelane._engine.run import Run
from ratelane._state.pending import PendingJournal, pending_path

__all__ = ["attach_background", "pending_path"]


def attach_background(
    run: Run,
    output_path: Path,
    done: Container[str],
    *,
    enabled: bool,
    cancel_on_exit: bool,
) -> PendingJournal:
    """Open OUTPUT's journal (compacted against ``done``) and give ``run`` its poller.

    The caller closes the journal when the run ends.
    """
    journal = PendingJournal(pending_path(output_path)).open(
        keep=lambda custom_id: custom_id not in done
    )
    run.journal = journal
    if enabled or journal.has_pending:
        run.background = Background(
            enabled=enabled,
            journal=journal,
            cancel_on_exit=cancel_on_exit,
            rng=run.engine.rng,
        )
    return journal
