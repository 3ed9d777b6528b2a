"""Where a Client picks its governor's backend: local, or one budget shared through Redis.

Imported only when a Client is given ``limiter=`` (or ``RATELANE_REDIS_URL`` is set),
so the ``redis`` package stays an optional extra (``pip install 'ratelane[redis]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ratelane._limits.governor import RateGovernor

if TYPE_CHECKING:
    from ratelane._limits.redis_budget import RedisLimiter

__all__ = ["close_governor", "shared_governor"]


async def shared_governor(
    limiter: RedisLimiter | str,
    identity: tuple[str, str | None, str | None],
    model: str | None,
    *,
    rpm: float | None,
    tpm: float | None,
) -> RateGovernor:
    """A started :class:`SharedGovernor` for the budget of ``identity`` (API key,
    organization, project) and ``model``; ``limiter`` is a :class:`RedisLimiter`
    (its URL and tuning, and any identity it names) or a ``redis://`` URL.

    Raises :class:`ConfigurationError` when Redis does not answer: nothing is sent.
    """
    from ratelane._limits.redis_budget import RedisLimiter
    from ratelane._limits.shared import SharedGovernor

    spec = limiter if isinstance(limiter, RedisLimiter) else RedisLimiter(limiter)
    api_key, organization, project = identity
    bound = spec.bound(
        api_key=api_key, organization=organization, project=project, model=model, rpm=rpm, tpm=tpm
    )
    governor = SharedGovernor(bound, rpm=rpm, tpm=tpm)
    try:
        await governor.start()
    except BaseException:
        await bound.aclose()
        raise
    return governor


async def close_governor(governor: RateGovernor) -> None:
    """Close a shared governor's heartbeat and connections (a local one has none)."""
    aclose = getattr(governor, "aclose", None)
    if aclose is not None:
        await aclose()
