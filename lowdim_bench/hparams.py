"""Typed declarations of a plugin's hyper-parameters and options, checked when it is built.

Why: a suite is typed by hand, and `recover = "yes"` or `hidden = -5` used to run as if valid.
A Method or Task declares each setting once, as a `Param` (default, type, range, help); the
base class checks every value against it (pydantic in strict mode: no "yes" for a bool, no 2.5
for an int, no NaN for a number), and `lowdim-bench list methods --verbose` prints the table.
A plugin that still uses a plain `defaults` dict gets a type inferred from each default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError


class PluginError(Exception):
    """A plugin broke the contract (bad hyper-parameter, wrong kind, ...). Message says which."""


_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One hyper-parameter (Method) or option (Task).

    `type` is a Python type or typing form: int, float, bool, str, list[str], str | list[str],
    Literal["top", "bottom"], int | None. Omitted, it is inferred from the default. `low`/`high`
    bound numbers (inclusive); `choices` is a shorthand for a Literal of strings.
    """

    default: Any
    type: Any = _MISSING
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""

    @property
    def annotation(self) -> Any:
        if self.choices is not None:
            return Literal[tuple(self.choices)]  # type: ignore[valid-type]
        if self.type is not _MISSING:
            return self.type
        return inferred_type(self.default)

    def type_text(self) -> str:
        return type_text(self.annotation)

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        return f"[{'-inf' if self.low is None else f'{self.low:g}'}, {'inf' if self.high is None else f'{self.high:g}'}]"

    def check(self, owner: str, name: str, value: Any) -> Any:
        """The value, validated; PluginError naming owner, name, value and what was expected."""
        expected = self.type_text() + (f" in {self.range_text()}" if self.range_text() else "")
        try:
            out = _adapter(self.annotation).validate_python(value, strict=True)
        except ValidationError:
            raise PluginError(f"{owner}: {name} = {value!r} is not a valid {expected}") from None
        for v in _numbers(out):
            if isinstance(v, float) and not math.isfinite(v):
                raise PluginError(f"{owner}: {name} = {value!r} must be a finite number")
            if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
                raise PluginError(f"{owner}: {name} = {value!r} is outside {self.range_text()}")
        return out


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for x in value for v in _numbers(x)]
    return []


@lru_cache(maxsize=256)
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def inferred_type(default: Any) -> Any:
    """The type a plain default implies. Strings and None accept anything: a default "auto" often
    stands for "auto or a list of names", which a default alone cannot say."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, list):
        return list
    return Any


def type_text(annotation: Any) -> str:
    """A short human name for a type: 'int', 'str | list[str]', "'top' | 'bottom'"."""
    if annotation is Any:
        return "any"
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if origin is Union or type(annotation).__name__ == "UnionType":
        return " | ".join(type_text(a) for a in get_args(annotation))
    if origin is not None:
        args = ", ".join(type_text(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def declared(cls: type) -> dict[str, Param]:
    """Every setting a Method or Task class declares: its `params`, plus plain `defaults`."""
    out = {k: Param(v) for k, v in getattr(cls, "defaults", {}).items()}
    out.update(getattr(cls, "params", {}))
    return out


def check_all(cls: type, what: str, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every given value checked; unknown names are an error listing the known."""
    table = declared(cls)
    owner = f"{what} {getattr(cls, 'name', cls.__name__)!r}"
    unknown = set(given) - set(table)
    if unknown:
        word = "hyper-parameter" if what == "method" else "option"
        raise PluginError(f"{owner}: unknown {word}(s) {sorted(unknown)}; known: {sorted(table) or 'none'}")
    out = {k: p.default for k, p in table.items()}
    for k, v in given.items():
        out[k] = table[k].check(owner, k, v)
    return out
