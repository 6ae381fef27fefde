"""The types configurable constructors annotate their parameters with: the annotation is the option's schema.

``capsal.config_schema`` binds a composed config to its ``_target_``'s signature and validates every value against
these annotations (pydantic, strict: ``True`` is no integer and ``'3'`` no number) before anything is built, so a
parameter declared here is checked, and tested (``tests/test_config_schema.py`` generates a bad value for every
constrained parameter), by being declared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]
UnitInterval = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]  # a fraction, both ends included
DropoutRate = Annotated[float, Field(strict=True, ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0.0)]
NonNegativeFloat = Annotated[float, Field(strict=True, ge=0.0)]


def _listed(names: Callable[[], Sequence[Any]], non_empty: bool) -> Callable[[list], list]:
    def check(value: list) -> list:
        allowed = list(names())
        if non_empty and not value:
            raise ValueError(f"give at least one of: {', '.join(map(str, allowed))}")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of: {', '.join(map(str, allowed))}")
        if len(set(value)) < len(value):
            raise ValueError("a name is repeated; give each at most once")
        return value

    return check


def NamesFrom(names: Callable[[], Sequence[Any]], non_empty: bool = False) -> Any:
    """A list of names taken from ``names()`` (called when a value is checked, so plugins registered later count),
    each at most once."""
    return Annotated[list[str], AfterValidator(_listed(names, non_empty))]


def NameFrom(names: Callable[[], Sequence[Any]]) -> Any:
    """One name taken from ``names()`` (e.g. the explainer registry)."""

    def check(value: str) -> str:
        return _listed(names, non_empty=True)([value])[0]

    return Annotated[str, Field(strict=True), AfterValidator(check)]
