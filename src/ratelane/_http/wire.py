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


@dataclass(slots=True)  # built once per answer: plain slots (frozen costs 3x)
class RateLimitHeaders:
    """The rate limits one answer announces; each value ``None`` when absent or unreadable.

    Every dialect is read (protocol notes, sections 1 and 10):
    ``x-ratelimit-{limit,remaining}-{requests,tokens}`` (OpenAI, Azure, LiteLLM
    model limits), the scoped ``x-ratelimit-<scope>-{limit,remaining}-{requests,tokens}``
    (LiteLLM per-key limits: ``api_key``, and any other scope) and
    ``x-litellm-key-{rpm,tpm}-limit``. When several scopes announce a limit
    the smallest binds, and the smallest remaining is the most constraining.

    The reset durations (unscoped only) are kept as text and parsed only when
    asked for: they matter only when ``remaining`` runs low, and this runs once
    per response.
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


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    # Azure sometimes sends -1: treat impossible values as absent (and NaN too).
    return number if number >= 0 else None


def _smaller(known: float | None, value: str) -> float | None:
    number = _number(value)
    if number is None or (known is not None and known <= number):
        return known
    return number


# What a header name carries: nothing, one of the four numbers, or one of the resets.
_IGNORED, _LIMIT_REQUESTS, _LIMIT_TOKENS, _REMAINING_REQUESTS, _REMAINING_TOKENS = range(5)
_RESET_REQUESTS, _RESET_TOKENS = 5, 6
_KINDS = {
    ("limit", "requests"): _LIMIT_REQUESTS,
    ("limit", "tokens"): _LIMIT_TOKENS,
    ("remaining", "requests"): _REMAINING_REQUESTS,
    ("remaining", "tokens"): _REMAINING_TOKENS,
}
_LITELLM_KEY_LIMITS = {
    "x-litellm-key-rpm-limit": _LIMIT_REQUESTS,
    "x-litellm-key-tpm-limit": _LIMIT_TOKENS,
}
#: Header name as received -> what it carries. A server sends the same few names
#: on every answer, so each is classified once; bounded against endless new names.
_SLOT_OF_NAME: dict[str, int] = {}
_SLOT_CACHE_LIMIT = 4096


def _slot_of(name: str) -> int:
    """Classify one header name (any case); see :class:`RateLimitHeaders` for the dialects.

    ``x-ratelimit-[<scope>-]{limit,remaining}-{requests,tokens}``,
    ``x-ratelimit-reset-{requests,tokens}`` (unscoped only; ``tokens_usage_based``
    and other variants are ignored) and ``x-litellm-key-{rpm,tpm}-limit``.
    """
    low = name.lower()
    slot = _IGNORED
    if low.startswith("x-ratelimit-"):
        head, _, unit = low[12:].rpartition("-")
        scope, _, kind = head.rpartition("-")
        if kind == "reset":
            if not scope and unit in ("requests", "tokens"):
                slot = _RESET_REQUESTS if unit == "requests" else _RESET_TOKENS
        else:
            slot = _KINDS.get((kind, unit), _IGNORED)
    else:
        slot = _LITELLM_KEY_LIMITS.get(low, _IGNORED)
    if len(_SLOT_OF_NAME) < _SLOT_CACHE_LIMIT:
        _SLOT_OF_NAME[name] = slot
    return slot


#: The header names of an answer, in order -> the (name, slot) pairs among them that
#: carry a limit. A server answers with the same names every time, so an answer's
#: layout is one lookup; bounded against servers whose names keep changing.
_LAYOUTS: dict[tuple[str, ...], tuple[tuple[str, int], ...]] = {}
_LAYOUT_CACHE_LIMIT = 256


def _layout_of(names: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    slot_of = _SLOT_OF_NAME.get
    layout = []
    for name in names:
        slot = slot_of(name)
        if slot is None:
            slot = _slot_of(name)
        if slot:
            layout.append((name, slot))
    found = tuple(layout)
    if len(_LAYOUTS) < _LAYOUT_CACHE_LIMIT:
        _LAYOUTS[names] = found
    return found


def read_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """The rate-limit view a response carries, or ``None`` if it announces no limit.

    The names are classified once per layout of names (see ``_LAYOUTS``); only
    rate-limit values are read.
    """
    names = tuple(headers)
    layout = _LAYOUTS.get(names)
    if layout is None:
        layout = _layout_of(names)
    if not layout:
        return None
    numbers: list[float | None] = [None, None, None, None, None]
    reset_requests = reset_tokens = None
    for name, slot in layout:
        if slot < _RESET_REQUESTS:
            numbers[slot] = _smaller(numbers[slot], headers[name])
        elif slot == _RESET_REQUESTS:
            reset_requests = headers[name]
        else:
            reset_tokens = headers[name]
    _, limit_requests, limit_tokens, remaining_requests, remaining_tokens = numbers
    if limit_requests is None and limit_tokens is None:
        return None
    # Positional, in field order: this runs once per answer.
    return RateLimitHeaders(
        limit_requests,
        limit_tokens,
        remaining_requests,
        remaining_tokens,
        reset_requests,
        reset_tokens,
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
