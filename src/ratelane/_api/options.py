"""Every option of the public entry points, defined once.

``run_many``, ``arun_many``, ``iter_results`` and ``Client(...)`` take exactly the
fields of :class:`ClientOptions` and :class:`RunOptions` with these defaults;
``Client.run_many`` / ``Client.iter_results`` take the RunOptions fields, where
``None`` means "the Client's". Any other keyword must be a body field some
endpoint knows (``ratelane._core.items.BODY_FIELDS``), else it is a typo and
:func:`check_body_fields` raises ``TypeError`` with a did-you-mean. Bodies get
new or vendor-specific fields through ``extra_body``.
``tests/test_api_options.py`` checks the signatures against these classes.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from ratelane._core.config import PROFILES, Price, Profile, RetryPolicy
from ratelane._core.errors import ConfigurationError
from ratelane._core.items import KNOWN_BODY_FIELDS, BodyDefaults
from ratelane._core.tokens import DEFAULT_OUTPUT_TOKENS
from ratelane._engine.breaker import BreakerPolicy

if TYPE_CHECKING:
    from ratelane._limits.redis_budget import RedisLimiter

__all__ = [
    "BodyFields",
    "ClientOptions",
    "Prices",
    "RunOptions",
    "check_body_fields",
    "client_arguments",
    "option_names",
    "run_options",
]


#: A price table, or the path of a JSON file of prices over the built-in table.
Prices = Mapping[str, Price] | str | os.PathLike[str] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """Connection, limits and retrying: what one Client (one account) holds."""

    api_key: str | None = None
    base_url: str | None = None
    organization: str | None = None
    project: str | None = None
    max_concurrency: int = 256
    rpm: float | None = None
    tpm: float | None = None
    retry: RetryPolicy | None = None
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
    prices: Prices = None
    # Operating a run (issue 14): spend cap (USD), circuit breaker (True: the default
    # policy, False: off), response cache file, remembered rate limits.
    max_cost: float | None = None
    breaker: BreakerPolicy | bool = True
    cache: str | os.PathLike[str] | None = None
    remember_limits: bool = True
    # One budget shared through Redis (issue 13): a RedisLimiter or a redis:// URL.
    limiter: RedisLimiter | str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What every request body gets by default, and how a call reports progress.

    ``body`` holds the body-field keywords (``temperature=0.2``, ...), already
    checked against the endpoints' tables.
    """

    model: str | None = None
    instructions: str | None = None
    profile: str | Profile | None = None
    progress: bool | None = None
    extra_body: Mapping[str, Any] | None = None
    body: Mapping[str, Any] = field(default_factory=dict)
    # Streaming (issue 12): stream each request (a ratelane option, not a body default).
    stream: bool | None = None
    #: Background mode (issue 12): send with "background": true and poll each response;
    #: ``journal``: a pending-journal path, so a crashed call re-attaches (see background.py).
    background: bool | None = None
    journal: str | os.PathLike[str] | None = None

    def over(self, base: RunOptions) -> RunOptions:
        """These options with every unset one taken from ``base`` (bodies merged)."""
        return RunOptions(
            model=self.model if self.model is not None else base.model,
            instructions=self.instructions if self.instructions is not None else base.instructions,
            profile=self.profile if self.profile is not None else base.profile,
            progress=self.progress if self.progress is not None else base.progress,
            extra_body={**(base.extra_body or {}), **(self.extra_body or {})},
            body={**base.body, **self.body},
            stream=self.stream if self.stream is not None else base.stream,
            background=self.background if self.background is not None else base.background,
            journal=self.journal if self.journal is not None else base.journal,
        )

    def body_defaults(self) -> BodyDefaults:
        """The defaults merged under every body: profile, then the rest (later wins)."""
        fields: dict[str, Any] = {}
        profile = self.profile
        if profile is not None:
            if isinstance(profile, str):
                if profile not in PROFILES:
                    raise ConfigurationError(
                        f"unknown profile {profile!r}. HINT: use one of {sorted(PROFILES)} "
                        "or pass a ratelane.Profile"
                    )
                profile = PROFILES[profile]
            fields.update(profile.body_defaults())
        if self.model is not None:
            fields["model"] = self.model
        if self.instructions is not None:
            fields["instructions"] = self.instructions
        fields.update(self.body)
        return BodyDefaults(fields, self.extra_body)


def option_names() -> tuple[str, ...]:
    """The keyword options every module-level entry point and ``Client(...)`` accept."""
    return tuple(
        f.name
        for cls in (RunOptions, ClientOptions)
        for f in dataclasses.fields(cls)
        if f.name != "body"
    )


def check_body_fields(where: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as a dict, or ``TypeError`` naming the first keyword no endpoint knows."""
    for name in body:
        if name not in KNOWN_BODY_FIELDS:
            close = difflib.get_close_matches(
                name, [*option_names(), *sorted(KNOWN_BODY_FIELDS)], n=1
            )
            suggestion = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{where}() got an unexpected keyword argument {name!r}{suggestion} "
                "HINT: keywords are ratelane options or known body fields of the endpoint; "
                f"send other body fields with extra_body={{{name!r}: ...}}"
            )
    return dict(body)


def client_arguments(where: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of an entry point's call, by name, ready for ``Client(...)``.

    ``arguments`` is the entry point's ``locals()``: its signature holds exactly
    ``option_names()`` and ``**body`` (``tests/test_api_options.py`` checks), so
    forwarding by name cannot drop or misspell an option.
    """
    body = check_body_fields(where, arguments["body"])
    return {name: arguments[name] for name in option_names()} | body


def run_options(where: str, arguments: Mapping[str, Any]) -> RunOptions:
    """A ``Client`` method's run options from its ``locals()`` (see ``client_arguments``)."""
    names = [f.name for f in dataclasses.fields(RunOptions) if f.name != "body"]
    return RunOptions(
        **{name: arguments[name] for name in names},
        body=check_body_fields(where, arguments["body"]),
    )


class BodyFields(TypedDict, total=False):
    """Body-field keywords, for type checkers (``**body: Unpack[BodyFields]``).

    The keys are ``KNOWN_BODY_FIELDS`` minus the explicit options (``model``,
    ``instructions``, ``stream``, ``background``); a test keeps the two in step.
    """

    input: Any
    temperature: float
    top_p: float
    stream_options: Mapping[str, Any]
    tools: list[Any]
    tool_choice: Any
    parallel_tool_calls: bool
    service_tier: str
    store: bool
    metadata: Mapping[str, str]
    prompt_cache_key: str
    safety_identifier: str
    user: str
    top_logprobs: int
    reasoning: Mapping[str, Any]
    max_output_tokens: int
    previous_response_id: str
    conversation: Any
    max_tool_calls: int
    text: Mapping[str, Any]
    include: list[str]
    truncation: str
    prompt: Any
    prompt_cache_retention: Any
    prompt_cache_options: Any
    context_management: Any
    moderation: Any
    personality: Any
    access_programs: Any
    background_options: Any
    image: Any
    messages: list[Any]
    max_completion_tokens: int
    max_tokens: int
    n: int
    seed: int
    stop: Any
    response_format: Mapping[str, Any]
    reasoning_effort: str
    logprobs: bool
    logit_bias: Mapping[str, float]
    frequency_penalty: float
    presence_penalty: float
    modalities: list[str]
    prediction: Any
    audio: Any
    web_search_options: Any
    verbosity: str
    functions: list[Any]
    function_call: Any
    encoding_format: str
    dimensions: int
