"""HTTP wire details: URLs, request headers, and the headers servers answer with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ratelane._core.durations import parse_duration

__all__ = [
    "REQUEST_ID_HEADERS",
    "RateLimitHeaders",
    "auth_headers",
    "join_url",
    "mask_key",
    "read_rate_limit_headers",
    "request_id_of",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def mask_key(api_key: str | None) -> str:
    """``sk-...abcd``: enough to tell keys apart, never enough to use one."""
    if not api_key:
        return "<none>"
    return f"{api_key[:3]}...{api_key[-4:]}" if len(api_key) > 10 else "***"


def join_url(base_url: str, path: str) -> str:
    """Join an SDK-style base URL (``.../v1``) with a Batch-style path (``/v1/responses``).

    The ``/v1`` is not doubled: ``http://h/v1`` + ``/v1/responses`` is
    ``http://h/v1/responses``; a base without ``/v1`` keeps the path whole.
    """
    base = base_url.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    if base.endswith("/v1") and (path.startswith("/v1/") or path == "/v1"):
        path = path[3:]
    return base + path


def auth_headers(
    api_key: str, *, organization: str | None = None, project: str | None = None
) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The six ``x-ratelimit-*`` values; each ``None`` when absent or unreadable.

    The reset durations are kept as text and parsed only when asked for: they
    matter only when ``remaining`` runs low, and this runs once per response.
    """

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: str | None = None
    reset_tokens: str | None = None

    @property
    def reset_requests_s(self) -> float | None:
        return None if self.reset_requests is None else parse_duration(self.reset_requests)

    @property
    def reset_tokens_s(self) -> float | None:
        return None if self.reset_tokens is None else parse_duration(self.reset_tokens)


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # Azure sometimes sends -1: treat impossible values as absent.
    return number if number >= 0 else None


def read_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """The rate-limit view a response carries, or ``None`` if it carries none."""
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return None
    return RateLimitHeaders(
        limit_requests=_number(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_number(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_number(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_number(headers, "x-ratelimit-remaining-tokens"),
        reset_requests=headers.get("x-ratelimit-reset-requests"),
        reset_tokens=headers.get("x-ratelimit-reset-tokens"),
    )


#: Where a request id may be, best first: OpenAI's own, then what gateways and
#: clouds send instead (LiteLLM, AWS, Azure API Management, Azure, Cloudflare).
REQUEST_ID_HEADERS = (
    "x-request-id",
    "x-litellm-call-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "apim-request-id",
    "x-ms-request-id",
    "x-correlation-id",
    "cf-ray",
)


def request_id_of(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """``(header name, id)`` from the first of REQUEST_ID_HEADERS present, else ``None``.

    OpenAI always sends ``x-request-id``, so the common case is one lookup.
    """
    value = headers.get("x-request-id")
    if value:
        return "x-request-id", value
    for name in REQUEST_ID_HEADERS[1:]:
        value = headers.get(name)
        if value:
            return name, value
    return None
