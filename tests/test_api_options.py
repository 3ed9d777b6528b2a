"""One typed option surface: the same options everywhere, typos caught at the call."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import ratelane
from ratelane import Client
from ratelane._api.options import BodyFields, ClientOptions, RunOptions, option_names
from ratelane._core.items import BODY_FIELDS, KNOWN_BODY_FIELDS
from ratelane.testing import FakeOpenAI
from ratelane.testing._validate import ALLOWED_FIELDS

MODULE_ENTRY_POINTS = [ratelane.run_many, ratelane.arun_many, ratelane.iter_results, Client]
CLIENT_HOOKS = {"sleep", "jitter_seed"}  # testing hooks, on Client(...) only


def _options(function: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only parameters (name -> default) and the annotation of ``**``."""
    parameters = inspect.signature(function).parameters.values()
    options = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    [var_keyword] = [p for p in parameters if p.kind is p.VAR_KEYWORD]
    options["**"] = (var_keyword.name, str(var_keyword.annotation))
    return options


def test_every_module_entry_point_takes_the_same_options_with_the_same_defaults() -> None:
    reference = _options(ratelane.arun_many)
    for function in MODULE_ENTRY_POINTS:
        options = _options(function)
        for hook in CLIENT_HOOKS & set(options):
            assert function is Client, hook
            del options[hook]
        assert options == reference, function
    assert set(reference) - {"**"} == set(option_names())
    assert reference["**"] == ("body", "Unpack[BodyFields]")  # typed, not **options: Any
    for cls in (ClientOptions, RunOptions):
        for field in dataclasses.fields(cls):
            if field.name in reference and field.name not in ("progress", "stream", "background"):
                assert reference[field.name] == field.default, field.name
    assert reference["progress"] is False
    assert reference["stream"] is False  # Streaming (issue 12); None on Client methods
    assert reference["background"] is False


def test_client_methods_take_the_run_options_defaulting_to_the_clients() -> None:
    run_names = {f.name for f in dataclasses.fields(RunOptions)} - {"body"}
    for method in (Client.run_many, Client.iter_results):
        options = _options(method)
        assert options.pop("**") == ("body", "Unpack[BodyFields]")
        assert options == dict.fromkeys(run_names)  # None: the Client's value


def test_the_typed_body_fields_are_the_table_of_known_fields() -> None:
    named = {"model", "instructions", "stream", "background"}  # named options, not body defaults
    assert set(BodyFields.__annotations__) == KNOWN_BODY_FIELDS - named
    # The table agrees with the fake server's model of the API, endpoint by endpoint.
    for path, fields in BODY_FIELDS.items():
        assert fields == set(ALLOWED_FIELDS[path]), path


def _calls(server: FakeOpenAI) -> dict[str, Callable[..., Awaitable[Any]]]:
    """Each entry point called with ``options``; awaiting runs it to the end."""
    where = {"api_key": server.api_key, "base_url": server.base_url}

    async def run_many(**options: Any) -> Any:
        return ratelane.run_many(["p"], model="gpt-4.1-mini", **where, **options)

    async def arun_many(**options: Any) -> Any:
        return await ratelane.arun_many(["p"], model="gpt-4.1-mini", **where, **options)

    async def iter_results(**options: Any) -> Any:
        iterator = ratelane.iter_results(["p"], model="gpt-4.1-mini", **where, **options)
        return [result async for result in iterator]  # the TypeError comes before this

    async def client(**options: Any) -> Any:
        async with Client(model="gpt-4.1-mini", **where, **options) as made:
            return await made.run_many(["p"])

    async def client_run_many(**options: Any) -> Any:
        async with Client(**where) as made:
            return await made.run_many(["p"], model="gpt-4.1-mini", **options)

    async def client_iter_results(**options: Any) -> Any:
        async with Client(**where) as made:
            iterator = made.iter_results(["p"], model="gpt-4.1-mini", **options)
            return [result async for result in iterator]

    calls = [run_many, arun_many, iter_results, client, client_run_many, client_iter_results]
    return dict(zip(ENTRY_POINTS, calls, strict=True))


ENTRY_POINTS = [
    "run_many",
    "arun_many",
    "iter_results",
    "Client",
    "Client.run_many",
    "Client.iter_results",
]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
async def test_a_typo_raises_type_error_with_a_suggestion_and_sends_nothing(
    entry_point: str,
) -> None:
    async with FakeOpenAI() as server:
        call = _calls(server)[entry_point]
        with pytest.raises(TypeError, match=r"'max_concurency'; did you mean 'max_concurrency'"):
            await call(max_concurency=4)
        with pytest.raises(
            TypeError, match=r"'temprature'; did you mean 'temperature'.*extra_body"
        ):
            await call(temprature=0.2)
        assert server.ledger.total == 0


async def test_iter_results_raises_at_the_call_not_at_the_first_iteration() -> None:
    with pytest.raises(TypeError, match="iter_results"):
        ratelane.iter_results(["p"], model="m", api_key="sk-test", max_concurency=4)
    async with FakeOpenAI() as server, Client(api_key=server.api_key) as client:
        with pytest.raises(TypeError, match="iter_results"):
            client.iter_results(["p"], model="m", mex_output_tokens=20)


async def test_client_options_are_accepted_by_every_module_entry_point() -> None:
    # iter_results used to lack timeout_s, which then went to the server as a body field.
    async with FakeOpenAI() as server:
        results = [
            result
            async for result in ratelane.iter_results(
                ["a", "b"],
                model="gpt-4.1-mini",
                timeout_s=5,
                connect_timeout_s=5,
                organization="org-1",
                default_output_tokens=64,
                api_key=server.api_key,
                base_url=server.base_url,
            )
        ]
        assert server.ledger.by_status == {200: 2}
    assert all(result.ok for result in results)


async def test_extra_body_reaches_the_server() -> None:
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            ["a", "b", "c"],
            model="gpt-4.1-mini",
            extra_body={"metadata": {"custom_id": "from-extra-body"}},
            api_key=server.api_key,
            base_url=server.base_url,
        )
        entries = list(server.ledger.entries)
        assert all(result.ok for result in results)
        assert [entry.custom_id for entry in entries] == ["from-extra-body"] * 3

        # A field no endpoint knows is sent as given: the server names it.
        [vendor] = await ratelane.arun_many(
            ["d"],
            model="gpt-4.1-mini",
            extra_body={"vendor_flag": True},
            api_key=server.api_key,
            base_url=server.base_url,
        )
    assert vendor.status_code == 400 and vendor.error is not None
    assert vendor.error.param == "vendor_flag"


async def test_client_run_options_are_defaults_a_call_overrides() -> None:
    async with (
        FakeOpenAI() as server,
        Client(
            model="gpt-4.1-mini",
            extra_body={"metadata": {"custom_id": "client"}},
            max_output_tokens=32,
            api_key=server.api_key,
            base_url=server.base_url,
        ) as client,
    ):
        [own] = await client.run_many(["a"])
        [call] = await client.run_many(["b"], extra_body={"metadata": {"custom_id": "call"}})
        assert [entry.custom_id for entry in server.ledger.entries] == ["client", "call"]
        created = await client.create({"input": "c"})
    assert own.ok and call.ok and created.ok
    assert own.body["max_output_tokens"] == 32


async def test_body_defaults_reach_only_the_endpoints_that_know_them() -> None:
    async with FakeOpenAI() as server:
        results = await ratelane.arun_many(
            [
                "responses",
                {
                    "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "hi"}]},
                },
                {
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": "x"},
                },
            ],
            model="gpt-4.1-mini",
            instructions="Be brief.",  # Responses only
            temperature=0.5,  # Responses and chat
            api_key=server.api_key,
            base_url=server.base_url,
        )
    assert [result.ok for result in results] == [True, True, True], [r.error for r in results]
    assert results[0].body["instructions"] == "Be brief."
    assert results[2].body["model"] == "text-embedding-3-small"
