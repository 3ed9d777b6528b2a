"""A cheaper ``__init__`` for the public frozen dataclasses made on every request.

A frozen dataclass's generated ``__init__`` stores each field with
``object.__setattr__``, about 100-200 ns a field here, and every request
makes a Result (16 slots), a Usage and a Request. :func:`quick_init` gives
such a class an ``__init__`` with the same signature that, for the class
itself, switches the new object to an unfrozen twin with the same slots,
stores the fields as plain attributes and switches it back (a quarter of the
cost); a subclass's objects are stored through the slot descriptors. The
objects are the same: still frozen (assignment raises
``FrozenInstanceError``), with the same equality, hash and repr.
(Internal per-answer values are plain slots classes.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

__all__ = ["quick_init"]

T = TypeVar("T")


class _Factory:
    """Stands in for "not passed" where a field has a default_factory (as in dataclasses)."""

    def __repr__(self) -> str:
        return "<factory>"


_NO_VALUE = _Factory()


def quick_init(cls: type[T]) -> type[T]:
    """Replace ``cls.__init__`` (a frozen slots dataclass) with the quicker one above."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen slots dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__, which quick_init does not call")
    # The twin has the same slots in the same order, so an object may switch between
    # the two (__class__ assignment checks the layouts) and back.
    twin = type(f"_Unfrozen{cls.__name__}", (), {"__slots__": cls.__dict__["__slots__"]})
    namespace: dict[str, Any] = {
        "_NO_VALUE": _NO_VALUE,
        "_cls": cls,
        "_twin": twin,
        "_set_class": object.__setattr__,
        "_type_of": type,  # a field may be called "type" (ErrorInfo's is)
    }
    positional: list[str] = []
    keyword_only: list[str] = []
    plain: list[str] = []
    through_descriptors: list[str] = []
    for number, field in enumerate(dataclasses.fields(cast(Any, cls))):
        name = field.name
        namespace[f"_set{number}"] = cls.__dict__[name].__set__
        if field.default is not dataclasses.MISSING:
            namespace[f"_default{number}"] = field.default
            value, param = name, f"{name}=_default{number}"
            if not field.init:
                value = f"_default{number}"
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{number}"] = field.default_factory
            value = f"_factory{number}() if {name} is _NO_VALUE else {name}"
            param = f"{name}=_NO_VALUE"
            if not field.init:
                value = f"_factory{number}()"
        else:
            value, param = name, name
        if field.init:
            (keyword_only if field.kw_only else positional).append(param)
        plain.append(f"        self.{name} = {value}")
        through_descriptors.append(f"        _set{number}(self, {value})")
    signature = ", ".join(["self", *positional, *(["*", *keyword_only] if keyword_only else [])])
    source = "\n".join(
        [
            f"def __init__({signature}) -> None:",
            "    if _type_of(self) is _cls:",
            '        _set_class(self, "__class__", _twin)',
            *plain,
            "        self.__class__ = _cls",
            "    else:",
            *(through_descriptors or ["        pass"]),
            "",
        ]
    )
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
