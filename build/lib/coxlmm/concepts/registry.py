"""Dictionary methods by name: `@register("semi_nmf")` on a class, `build_dictionary(name, **kw)`.

The registry is filled at import time by the method modules (imported in `__init__.py`) and
never changes afterwards, so it is not mutable state in any practical sense.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from coxlmm.errors import CoxlmmError

if TYPE_CHECKING:
    from coxlmm.concepts.base import Dictionary

D = TypeVar("D", bound="type[Dictionary]")

_METHODS: dict[str, "type[Dictionary]"] = {}


def register(name: str) -> Callable[[D], D]:
    """Class decorator: register a `Dictionary` subclass under `name` (also sets `cls.name`)."""

    def decorator(cls: D) -> D:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"dictionary method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorator


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> "type[Dictionary]":
    """The class registered under `name`; CoxlmmError listing the known names otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise CoxlmmError(
            f"Unknown dictionary method {name!r}. Registered methods: "
            f"{', '.join(available_methods())}. Pick one of these (e.g. `method=semi_nmf`), "
            "or register a new class with `@coxlmm.concepts.registry.register(name)`."
        ) from None


def build_dictionary(name: str, **kwargs) -> "Dictionary":
    """A fresh, unfitted dictionary: `build_dictionary("semi_nmf", n_concepts=20, seed=0)`."""
    return get_method(name)(**kwargs)
