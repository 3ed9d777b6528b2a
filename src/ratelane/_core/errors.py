"""ratelane's exception tree. Every error the library raises is one of these.

::

    RatelaneError
    ├── ConfigurationError (also ValueError)  an option value that cannot work
    ├── InputError (also ValueError)          an item or input line that is not a request
    ├── APIError                              the server answered with an error (Client.create)
    ├── TransportError                        no usable answer: refused, reset, truncated
    │   └── RequestTimeout (also TimeoutError)
    ├── OutputLockedError                     another run is writing the same output
    └── FatalError                            the run stopped early; carries what it finished

Messages never contain the API key: errors are built from status codes,
server error bodies and our own text, never from request headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Result, RunStats

__all__ = [
    "APIError",
    "ConfigurationError",
    "FatalError",
    "InputError",
    "OutputLockedError",
    "RatelaneError",
    "RequestTimeout",
    "TransportError",
]


class RatelaneError(Exception):
    """Base of every exception ratelane raises."""


class ConfigurationError(RatelaneError, ValueError):
    """An option has a value that cannot work; the message says which and why."""


class InputError(RatelaneError, ValueError):
    """An item or input line is not a valid request.

    ``line`` is the 1-based line number for file input, ``None`` for items
    passed in memory (``index`` then says which item, 0-based).
    """

    def __init__(self, message: str, *, line: int | None = None, index: int | None = None) -> None:
        self.line = line
        self.index = index
        where = (
            f"line {line}: "
            if line is not None
            else (f"item {index}: " if index is not None else "")
        )
        super().__init__(f"{where}{message}")


class APIError(RatelaneError):
    """The server answered with an error status (or a failed response body)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        custom_id: str | None = None,
        body: Any = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.error_type = error_type
        self.param = param
        self.request_id = request_id
        self.custom_id = custom_id
        self.body = body
        context = ", ".join(
            f"{name}={value}"
            for name, value in (
                ("status", status_code),
                ("code", code),
                ("custom_id", custom_id),
                ("request_id", request_id),
            )
            if value is not None
        )
        super().__init__(f"{message} ({context})" if context else message)


class TransportError(RatelaneError):
    """No usable HTTP answer: connection refused or reset, or an unreadable body."""


class RequestTimeout(TransportError, TimeoutError):
    """A request took longer than its connect or total timeout."""


class OutputLockedError(RatelaneError):
    """Another ratelane run holds the lock on the same output file."""


class FatalError(RatelaneError):
    """The run stopped early because continuing could not succeed.

    Raised for an invalid API key, exhausted quota, or a long streak of
    identical permanent errors. Requests already in flight were allowed to
    finish; ``results`` holds every result completed before the stop (input
    order, ``None`` for items never sent) and ``stats`` the run summary.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        results: Sequence[Result | None] = (),
        stats: RunStats | None = None,
    ) -> None:
        self.reason = reason
        self.results = list(results)
        self.stats = stats
        super().__init__(message)
