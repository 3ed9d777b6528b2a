"""Background mode: a create that answered ``queued``, polled until it ends.

With ``background: true`` the create returns at once with ``status: "queued"``
(or ``in_progress``) and a response id; the answer is fetched later with
``GET /v1/responses/{id}``. The rules:

- **Journal first.** The id goes to the journal (see
  ``ratelane._state.pending``) the moment the create answers, before any
  poll: a crash from then on re-attaches to it instead of paying again.
- **Bounded polling.** Poll ``k`` (0-based) waits
  ``min(cap_s, first_s * growth**k) * (1 - jitter * u)``, ``u`` uniform in
  [0, 1): about 1 s after the create, then 1.5 s, 2.25 s ... up to 10 s. Every
  wait is at least ``first_s * (1 - jitter)`` (0.8 s) and the waits grow, so a
  response that lives ``T`` seconds costs at most ``3 + T`` polls
  (:func:`poll_delay`, checked by a test over many lives). A response
  re-attached on resume (created by an earlier run) is polled at once first.
- **Polls spend the budget.** Each poll is admitted by the rate governor like
  any request (one request, no tokens) and its rate-limit headers are
  learned. A poll answered 429/5xx or not at all is simply polled again later.
- **The end, as a Result.** ``completed`` and ``incomplete`` (partial output
  and ``incomplete_details`` kept in the body) are successes, exactly like a
  foreground create; ``failed`` is judged by its error code like a foreground
  ``failed`` body; ``cancelled`` fails with code ``cancelled``. A response
  the server no longer knows (404: expired) fails with code
  ``background_not_found``. Failed, cancelled and lost ids are forgotten by
  the journal, so the next run creates them again.
- **Stopping.** When the run stops, a poller sends nothing more and its line
  gets no Result (the journal keeps the id, so resume re-attaches);
  with ``cancel_on_exit`` it first cancels the response
  (``POST /v1/responses/{id}/cancel``) and forgets it.
- ``store: false`` with background is refused before sending: a background
  response must be stored to be polled.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from ratelane._core.errors import ConfigurationError, TransportError
from ratelane._core.models import ErrorInfo
from ratelane._http.transport import Reply, Transport, translated_errors
from ratelane._http.wire import read_rate_limit_headers

from .retry import Decision, Verdict, decide

if TYPE_CHECKING:
    from .run import Run, _State

__all__ = [
    "RUNNING",
    "Background",
    "Journal",
    "PollPolicy",
    "SessionWire",
    "Wire",
    "poll_delay",
    "store_false_refusal",
]

logger = logging.getLogger("ratelane")

#: Statuses of a background response that is not finished yet.
RUNNING = frozenset({"queued", "in_progress"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PollPolicy:
    """When to poll a background response: see :func:`poll_delay`."""

    first_s: float = 1.0
    growth: float = 1.5
    cap_s: float = 10.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.first_s > 0 and self.growth >= 1 and self.cap_s >= self.first_s):
            raise ConfigurationError(
                "PollPolicy needs first_s > 0, growth >= 1 and cap_s >= first_s, got "
                f"first_s={self.first_s}, growth={self.growth}, cap_s={self.cap_s}"
            )
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"PollPolicy.jitter must be in [0, 1), got {self.jitter}")


def poll_delay(policy: PollPolicy, k: int, u: float) -> float:
    """Seconds to wait before poll ``k`` (0-based), ``u`` uniform in [0, 1).

    ``min(cap_s, first_s * growth**k) * (1 - jitter * u)``: the first poll about
    a second after the create, the interval growing to the cap; the jitter
    keeps thousands of responses created together from polling in step.
    """
    base = policy.cap_s if k > 64 else min(policy.cap_s, policy.first_s * policy.growth**k)
    return base * (1.0 - policy.jitter * u)


def store_false_refusal() -> ErrorInfo:
    return ErrorInfo(
        "invalid_request",
        "background mode needs a stored response, but the body has 'store': false: the "
        "response could not be polled. HINT: remove 'store': false (or send 'store': true), "
        "or run this line without background mode",
        param="store",
    )


class Journal(Protocol):
    """Where response ids are kept across crashes (``ratelane._state.pending.PendingJournal``)."""

    @property
    def has_pending(self) -> bool: ...

    def pending(self, custom_id: str) -> str | None: ...

    def record(self, custom_id: str, response_id: str) -> None: ...

    def forget(self, custom_id: str) -> None: ...


class Wire(Protocol):
    """The two calls polling needs (a Transport over aiohttp, or a test double)."""

    async def get(self, path: str) -> Reply: ...

    async def post(self, path: str, payload: bytes) -> Reply: ...


class SessionWire:
    """:class:`Wire` over a Transport's pooled session (GET is not a Transport method)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def get(self, path: str) -> Reply:
        transport = self._transport
        url = transport.url_for(path)
        with translated_errors(url):
            async with transport.session.get(url) as response:
                raw = await response.read()
                return Reply(response.status, response.headers, raw)

    async def post(self, path: str, payload: bytes) -> Reply:
        return await self._transport.post(path, payload)


class Background:
    """The background side of one run: polling, the journal, cancel on exit.

    ``enabled``: every request of the run is sent with ``"background": true``
    (the ``background=True`` option); otherwise only bodies that say so are
    polled. ``wire`` defaults to the run's transport; ``journal`` is optional (without
    it, a crash loses the ids, and the lines are created again).
    """

    def __init__(
        self,
        *,
        enabled: bool = False,
        journal: Journal | None = None,
        wire: Wire | None = None,
        policy: PollPolicy | None = None,
        cancel_on_exit: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.enabled = enabled
        self.journal = journal
        self.wire = wire
        self.policy = policy or PollPolicy()
        self.cancel_on_exit = cancel_on_exit
        self.rng = rng or random.Random()
        #: Polls sent (all responses), for the stats and the tests.
        self.polls = 0
        #: Background responses followed to their end (or to the stop).
        self.responses = 0
        self._stopped = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<Background polls={self.polls} responses={self.responses} "
            f"journal={self.journal!r} cancel_on_exit={self.cancel_on_exit}>"
        )

    def stop(self) -> None:
        """Wake every poller: each stops (cancelling first with ``cancel_on_exit``)."""
        self._stopped.set()

    # -- hooks called by Run.execute ------------------------------------------------
    def attached(self, custom_id: str) -> str | None:
        """The response id to re-attach to instead of creating ``custom_id``."""
        journal = self.journal
        if journal is None or not journal.has_pending:
            return None
        return journal.pending(custom_id)

    async def reattach(self, run: Run, state: _State, response_id: str) -> Decision:
        """Follow a response created by an earlier run (never create it again)."""
        logger.debug("re-attaching custom_id=%s to %s", state.request.custom_id, response_id)
        return await self._follow(run, state, response_id, waited=True)

    async def settle(self, run: Run, state: _State, decision: Decision) -> Decision:
        """A create's answer; when it is a running background response, its end."""
        body = decision.body
        if (
            decision.verdict is not Verdict.SUCCESS
            or type(body) is not dict
            or body.get("status") not in RUNNING
        ):
            return decision
        response_id = body.get("id")
        if not isinstance(response_id, str):
            return decision
        if self.journal is not None:
            self.journal.record(state.request.custom_id, response_id)
        return await self._follow(run, state, response_id)

    # -- polling ----------------------------------------------------------------------
    def _wire(self, run: Run) -> Wire:
        if self.wire is None:
            transport: object = run.engine.transport
            # A test double standing in for the Transport speaks Wire itself.
            wire = SessionWire(transport) if isinstance(transport, Transport) else transport
            self.wire = cast("Wire", wire)
        return self.wire

    async def _follow(
        self, run: Run, state: _State, response_id: str, *, waited: bool = False
    ) -> Decision:
        """Poll ``response_id`` to its end; ``waited``: it was created long ago, poll at once."""
        from .run import NotSent  # a sibling's name, at call time: run.py imports this module

        self.responses += 1
        wire = self._wire(run)
        engine = run.engine
        governor = engine.governor
        path = f"/v1/responses/{response_id}"
        k = 0
        while True:
            delay = 0.0 if waited and k == 0 else poll_delay(self.policy, k, self.rng.random())
            if await self._wait(delay):
                await self._leave(run, state, response_id)
                raise NotSent
            k += 1
            admitted_at = await governor.admit(0)
            if run.stopping or self._stopped.is_set():
                await self._leave(run, state, response_id)
                raise NotSent
            self.polls += 1
            try:
                reply = await wire.get(path)
            except TransportError as exc:
                governor.observe(None)
                logger.debug("poll of %s failed (%s); polling again", response_id, exc)
                continue
            governor.observe(
                read_rate_limit_headers(reply.headers),
                typical_tokens=engine.typical_tokens,
                sent_at=admitted_at,
            )
            ended = self._judge(run, state, reply, response_id)
            if ended is not None:
                return ended

    def _judge(self, run: Run, state: _State, reply: Reply, response_id: str) -> Decision | None:
        """The Decision a poll's answer ends with, or ``None`` to poll again."""
        custom_id = state.request.custom_id
        if reply.status == 404:
            self._forget(custom_id)
            return Decision(
                Verdict.PERMANENT,
                ErrorInfo(
                    "background_not_found",
                    f"background response {response_id} is no longer known to the server "
                    "(background responses are kept about 10 minutes). HINT: run again to "
                    "create it anew",
                ),
                404,
            )
        decision = decide(reply.status, reply.headers, reply.raw, run.engine.policy, state.body)
        body = decision.body
        if decision.verdict is not Verdict.SUCCESS:
            if decision.status == 200 or decision.verdict is Verdict.FATAL:
                self._forget(custom_id)  # a failed response (or a fatal answer): final
                return decision
            return None  # 429, 5xx, a truncated answer: poll again later
        status = body.get("status") if type(body) is dict else None
        if status in RUNNING:
            return None
        if status == "cancelled":
            self._forget(custom_id)
            error = ErrorInfo("cancelled", f"background response {response_id} was cancelled")
            return Decision(Verdict.PERMANENT, error, 200, body, reply.raw)
        return decision

    def _forget(self, custom_id: str) -> None:
        if self.journal is not None:
            self.journal.forget(custom_id)

    async def _wait(self, delay_s: float) -> bool:
        """Sleep ``delay_s``; ``True`` when the run stopped meanwhile."""
        if self._stopped.is_set() or delay_s <= 0:
            return self._stopped.is_set()
        try:
            await asyncio.wait_for(self._stopped.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    async def _leave(self, run: Run, state: _State, response_id: str) -> None:
        """The run stops while ``response_id`` runs: keep it for resume, or cancel it."""
        if not self.cancel_on_exit:
            return
        try:
            reply = await self._wire(run).post(f"/v1/responses/{response_id}/cancel", b"")
        except TransportError as exc:
            logger.warning("could not cancel background response %s: %s", response_id, exc)
            return
        if reply.status < 300:
            self._forget(state.request.custom_id)
            logger.debug("cancelled background response %s", response_id)
        else:
            logger.warning(
                "cancelling background response %s answered HTTP %d", response_id, reply.status
            )
