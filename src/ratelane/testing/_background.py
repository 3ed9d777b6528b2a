"""Background responses: a lifecycle computed from the clock, and the terminal outcomes.

A background response is decided whole at create time (its final object and
its timeline); what a poll sees is a pure function of the clock:

    now < queued_until            -> "queued"      (no output, usage null)
    queued_until <= now < done_at -> "in_progress" (no output, usage null)
    done_at <= now                -> the outcome: "completed", "failed" or "incomplete"

A cancel before ``done_at`` freezes it at ``cancelled`` (no output, usage
null); a cancel after returns the terminal response unchanged, like the real
API. Nothing runs between polls: no task, no timer, so a server with
thousands of pending responses costs only their objects, and an injected
clock moves them along without waiting.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from . import _bodies
from ._modes import FAILED_MARKER, INCOMPLETE_MARKER, Background

__all__ = [
    "BackgroundJob",
    "Outcome",
    "apply_outcome",
    "background_store_false",
    "failed",
    "incomplete",
    "pick_outcome",
    "with_status",
]

Outcome = Literal["completed", "failed", "incomplete"]

#: ``response.error`` of a failed response (the spec's ``server_error`` code).
FAILED_ERROR = {
    "code": "server_error",
    "message": "The server had an error while processing your request. Sorry about that!",
}


def background_store_false() -> bytes:
    """400 for ``background: true`` with ``store: false`` (exact real wording unverified)."""
    return _bodies.error(
        "Background mode requires 'store' to be true: a background response must be stored "
        "so it can be polled. Send 'store': true or omit it.",
        "invalid_request_error",
        "store",
        "unsupported_value",
    )


def pick_outcome(body: Mapping[str, Any], options: Background, draw: float) -> Outcome:
    """The marker in the input text wins, else ``draw`` (uniform in [0, 1)) against the odds."""
    text = _bodies.input_text(body.get("input"))
    if FAILED_MARKER in text:
        return "failed"
    if INCOMPLETE_MARKER in text:
        return "incomplete"
    if draw < options.failed:
        return "failed"
    if draw < options.failed + options.incomplete:
        return "incomplete"
    return "completed"


def with_status(response: Mapping[str, Any], status: str) -> dict[str, Any]:
    """A not-yet-finished (or cancelled) view: no output, no usage, no completion time."""
    view = dict(response)
    view.update(
        status=status,
        output=[],
        usage=None,
        completed_at=None,
        error=None,
        incomplete_details=None,
    )
    return view


def failed(response: Mapping[str, Any]) -> dict[str, Any]:
    """The response ended ``failed``: ``error`` set, no output, usage null."""
    result = with_status(response, "failed")
    result["error"] = dict(FAILED_ERROR)
    return result


def incomplete(response: Mapping[str, Any]) -> dict[str, Any]:
    """The response ended ``incomplete``: half its text, ``incomplete_details`` set.

    The message item is kept with status ``incomplete`` and its text cut in
    half; ``usage`` stays (the tokens were spent).
    """
    result = copy.deepcopy(dict(response))
    result.update(
        status="incomplete",
        completed_at=None,
        incomplete_details={"reason": "max_output_tokens"},
    )
    for item in result["output"]:
        if item.get("type") == "message":
            item["status"] = "incomplete"
            for part in item["content"]:
                if part.get("type") == "output_text":
                    part["text"] = part["text"][: len(part["text"]) // 2]
    return result


def apply_outcome(response: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    if outcome == "failed":
        return failed(response)
    if outcome == "incomplete":
        return incomplete(response)
    return response


@dataclass(slots=True)
class BackgroundJob:
    """One background response: its final object, timeline, and cancel state."""

    final: dict[str, Any]
    queued_until: float
    done_at: float
    cancelled: bytes | None = None
    _final_bytes: bytes = field(default=b"", repr=False)

    def status(self, now: float) -> str:
        if self.cancelled is not None:
            return "cancelled"
        if now < self.queued_until:
            return "queued"
        if now < self.done_at:
            return "in_progress"
        return str(self.final["status"])

    def view(self, now: float) -> bytes:
        """The wire body a poll sees at ``now``."""
        if self.cancelled is not None:
            return self.cancelled
        if now >= self.done_at:
            if not self._final_bytes:
                self._final_bytes = orjson.dumps(self.final)
            return self._final_bytes
        return orjson.dumps(with_status(self.final, self.status(now)))

    def cancel(self, now: float) -> bytes:
        """Cancel before the end freezes ``cancelled``; after it, the terminal body unchanged."""
        if self.cancelled is None and now < self.done_at:
            self.cancelled = orjson.dumps(with_status(self.final, "cancelled"))
        return self.view(now)
