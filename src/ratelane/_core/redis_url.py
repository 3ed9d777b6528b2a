"""Redis URLs in messages: the password never shown (shared budget, issue 13)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["safe_redis_url"]


def safe_redis_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
