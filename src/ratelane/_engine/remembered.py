"""Remembered limits, wired: seed the governor from the first request's model, save at the end.

With no limit known, the governor sends one probe and waits for its answer
before fanning out; against a model with 30 s latency that doubles a short
run. A client that remembers the limits its account announced last time
(:class:`~ratelane._state.remembered_limits.LimitMemory`) starts at
``HEADROOM`` of them with no probe, and the first answer's headers correct
the figure either way. The limits are keyed by the model of the run's first
request (OpenAI's limits are per model); what is saved is only what the
server announced, never a figure this client merely assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ratelane._limits.governor import RateGovernor
from ratelane._state.remembered_limits import LimitMemory, limits_key

__all__ = ["HEADROOM", "LimitRecall"]

logger = logging.getLogger("ratelane")

#: A remembered limit is assumed at this fraction until the server confirms it.
HEADROOM = 0.9


class LimitRecall:
    """One client's remembered limits: ``seed`` at the first request, ``save`` at close."""

    __slots__ = ("_assumed", "_identity", "memory", "model")

    def __init__(
        self,
        memory: LimitMemory,
        *,
        base_url: str,
        api_key: str,
        organization: str | None,
        project: str | None,
    ) -> None:
        self.memory = memory
        self._identity = (base_url, api_key, organization, project)
        self.model: str | None = None
        self._assumed: tuple[float | None, float | None] | None = None

    def __repr__(self) -> str:  # the key stays out: only the file and the model
        return f"<LimitRecall {str(self.memory.path)!r} model={self.model!r}>"

    def _key(self, model: str) -> str:
        base_url, api_key, organization, project = self._identity
        return limits_key(
            base_url=base_url,
            api_key=api_key,
            organization=organization,
            project=project,
            model=model,
        )

    def seed(self, body: Mapping[str, Any], governor: RateGovernor) -> None:
        """At the first request: start ``governor`` from the limits remembered for its model."""
        model = body.get("model")
        if not isinstance(model, str) or self.model is not None:
            return
        self.model = model
        remembered = self.memory.recall(self._key(model))
        if remembered is None:
            return
        rpm = remembered.rpm * HEADROOM if remembered.rpm else None
        tpm = remembered.tpm * HEADROOM if remembered.tpm else None
        fans_out = governor.assume_limits(rpm=rpm, tpm=tpm)
        self._assumed = (governor.learned_rpm, governor.learned_tpm)
        if fans_out:
            logger.info(
                "starting from remembered rate limits for %s (rpm %s, tpm %s, at %.0f%%) "
                "without a probe; the server's headers correct them",
                model,
                remembered.rpm,
                remembered.tpm,
                HEADROOM * 100,
            )

    def save(self, governor: RateGovernor) -> None:
        """Remember what the server announced this time (nothing when it announced nothing)."""
        model = self.model
        learned = (governor.learned_rpm, governor.learned_tpm)
        if model is None or learned == (None, None) or learned == self._assumed:
            return
        self.memory.remember(self._key(model), rpm=learned[0], tpm=learned[1])
