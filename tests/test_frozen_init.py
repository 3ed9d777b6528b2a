"""quick_init: the same frozen dataclass, built through its slot descriptors."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from ratelane._core.frozen import quick_init
from ratelane._core.models import ErrorInfo, Request, Result, Usage


def _pair() -> tuple[type, type]:
    def make() -> type:
        @dataclasses.dataclass(frozen=True, slots=True)
        class Sample:
            a: int
            b: str = "b"
            c: list[int] = dataclasses.field(default_factory=list)
            d: int = dataclasses.field(default=4, init=False)
            e: tuple[int, ...] = dataclasses.field(default=(), kw_only=True)

        return Sample

    return make(), quick_init(make())


def test_same_signature_defaults_and_factories_as_the_dataclass() -> None:
    plain, quick = _pair()
    assert str(inspect.signature(quick)) == str(inspect.signature(plain))
    for args, kwargs in [((1,), {}), ((1, "x", [2]), {"e": (3,)}), ((), {"a": 5, "c": [1]})]:
        assert dataclasses.asdict(quick(*args, **kwargs)) == dataclasses.asdict(
            plain(*args, **kwargs)
        )
    assert quick(1).c is not quick(1).c  # a fresh list each time
    assert quick(1).d == 4
    with pytest.raises(TypeError):
        quick(1, d=5)  # init=False stays out of the signature


def test_still_frozen_with_equality_and_hash() -> None:
    _, quick = _pair()
    sample = quick(1, e=(2,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.a = 2
    assert sample == quick(1, e=(2,)) and sample != quick(2)
    assert hash(quick(1, c=None)) == hash(quick(1, c=None))  # type: ignore[arg-type]


def test_refuses_what_it_cannot_build() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="not a frozen slots dataclass"):
        quick_init(Mutable)
    with pytest.raises(TypeError, match="__post_init__"):
        quick_init(Checked)


@pytest.mark.parametrize("cls", [Request, Usage, ErrorInfo, Result])
def test_the_public_values_keep_their_dataclass_signature(cls: type) -> None:
    fields = [field for field in dataclasses.fields(cls) if field.init]
    parameters = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in parameters] == [field.name for field in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        expected = (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )
        assert parameter.default == expected


def test_objects_keep_their_class_and_a_subclass_is_built_through_the_descriptors() -> None:
    _, quick = _pair()
    assert type(quick(1)) is quick

    class Sub(quick):  # type: ignore[misc, valid-type]
        """A plain subclass: it runs quick_init's __init__ for an object not of its class."""

    sub = Sub(1, "x", e=(5,))
    assert type(sub) is Sub and (sub.a, sub.b, sub.d, sub.e) == (1, "x", 4, (5,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.a = 2


def test_a_field_may_share_a_name_with_a_builtin() -> None:
    error = ErrorInfo("bad", "message", type="invalid_request_error", param="model")
    assert (error.code, error.message, error.type, error.param) == (
        "bad",
        "message",
        "invalid_request_error",
        "model",
    )
    assert type(error) is ErrorInfo
