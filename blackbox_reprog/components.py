"""One registry per component family, and the config section that builds a component.

A component is a class with a ``kind`` name. Its ``__init__`` takes what the run builds it
from (shapes, sizes: positional) and then its *parameters*: keyword-only, with defaults. A
subclass declares only the parameters it adds and passes the rest on with ``**rest``; the
family reads them from the signatures up the class hierarchy. A config section is ``kind``
plus that kind's parameters, checked against those signatures before anything is built, so
adding a component with a parameter touches only its own module (and its test).

Limits ride on the annotation, checked with the config key in the message::

    directions: Annotated[int, AtLeast(1)] = 10
    smoothing: Annotated[float, Above(0)] = 0.005
    distribution: Annotated[str, OneOf("gaussian", "sphere")] = "gaussian"
"""
from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

from .errors import Refusal


class ComponentError(Refusal):
    """A component section names an unknown kind or parameter, or a value out of its limits."""


# ---- limits a parameter's annotation may carry -------------------------------------------------
@dataclass(frozen=True)
class AtLeast:
    low: float

    def refuses(self, value) -> str:
        return f"at least {self.low}" if value < self.low else ""


@dataclass(frozen=True)
class Above:
    low: float

    def refuses(self, value) -> str:
        return f"above {self.low}" if not value > self.low else ""


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def __init__(self, *choices):
        object.__setattr__(self, "choices", choices)

    def refuses(self, value) -> str:
        return f"among {', '.join(repr(c) for c in self.choices)}" if value not in self.choices else ""


# ---- a parameter and a section ------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any
    limits: tuple = ()

    def check(self, value: Any, key: str) -> Any:
        """``value`` as this parameter's type, within its limits; ``key`` names it in refusals."""
        value = coerce(value, self.default, key)
        for limit in self.limits:
            bound = limit.refuses(value)
            if bound:
                raise ComponentError(f"expected {key} {bound}, got {value!r}")
        return value


def coerce(value: Any, default: Any, key: str) -> Any:
    """A TOML value as the type of ``default`` (an int where an int is expected, …)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ComponentError(f"expected true or false for {key}, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, (int, float)):
        if isinstance(value, float) and not value.is_integer():
            raise ComponentError(f"expected an integer for {key}, got {value!r}")
        return int(value)
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, type(value)):
        return value
    kind = {"int": "an integer", "float": "a number", "str": "a string", "dict": "a table"}.get(
        type(default).__name__, type(default).__name__)
    raise ComponentError(f"expected {kind} for {key}, got {value!r}")


@dataclass(frozen=True)
class Section:
    """A config section naming one component: its kind and every parameter of that kind
    (defaults filled in). ``section.lr`` reads a parameter."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "params":        # copy and pickle look these up
            raise AttributeError(name)
        for key, value in self.params:
            if key == name:
                return value
        raise AttributeError(f"{self.kind!r} has no parameter {name!r}")

    def options(self) -> dict:
        return dict(self.params)

    def as_dict(self) -> dict:
        return {"kind": self.kind, **self.options()}


# ---- a family ------------------------------------------------------------------------------------
class Family:
    """kind → class for one config section. ``context`` names the keyword arguments the run
    passes to whichever class of the family takes them (a seed, class counts): they are not
    parameters. ``wrap(component, **context, **params)``, when given, is applied to every
    component built and its own keyword-only parameters are shared by every kind (a transform's
    ``subspace``)."""

    def __init__(self, section: str, *, context: tuple[str, ...] = (), wrap: Callable | None = None):
        self.section, self.context, self.wrap = section, tuple(context), wrap
        self.classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: the class joins the family under its ``kind``."""
        if not cls.kind or cls.kind in self.classes:
            raise ValueError(f"expected a new kind for {self.section}, got {cls.kind!r} on {cls.__name__}")
        self.classes[cls.kind] = cls
        return cls

    def kinds(self) -> list[str]:
        return list(self.classes)

    def cls(self, kind: str) -> type:
        if kind not in self.classes:
            close = difflib.get_close_matches(str(kind), self.kinds(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ComponentError(f"unknown {self.section}.kind {kind!r}; {hint}expected one of: "
                                 f"{', '.join(self.kinds())}")
        return self.classes[kind]

    def parameters(self, kind: str) -> dict[str, Parameter]:
        """The kind's parameters: those it inherits first, then its own class's, then shared."""
        found: dict[str, Parameter] = {}
        for function in [cls.__init__ for cls in reversed(_up_the_chain(self.cls(kind)))] + [self.wrap]:
            if function is not None:
                for parameter in _keyword_only(function):
                    if parameter.name not in self.context:
                        found[parameter.name] = parameter      # a subclass may redeclare one
        return found

    def section_of(self, kind: str, values: dict | None = None, *, strict: bool = True) -> Section:
        """A section of ``kind`` from config ``values`` (its parameters; defaults for the rest).
        ``strict``: refuse a parameter the kind does not take, naming the closest one; else
        drop it (values written for another kind)."""
        known = self.parameters(kind)
        params = {name: p.default for name, p in known.items()}
        for name, value in (values or {}).items():
            if name not in known:
                if not strict:
                    continue
                close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
                hint = (f"did you mean {self.section}.{close[0]}?" if close else
                        f"{kind!r} takes {', '.join(known) or 'no parameters'}")
                raise ComponentError(f"unknown config key {self.section}.{name} for {self.section}.kind "
                                     f"{kind!r}; {hint}")
            params[name] = known[name].check(value, f"{self.section}.{name}")
        return Section(kind, tuple(params.items()))

    def takes(self, kind: str, name: str) -> bool:
        return name in self.parameters(kind)

    def build(self, section: Section, *args, **context):
        """The component a section describes, built from ``args`` and whatever of ``context``
        its class takes."""
        cls, params = self.cls(section.kind), section.options()
        own = {name: value for name, value in params.items() if name not in _names(self.wrap)}
        taken = {name for c in _up_the_chain(cls) for name in _names(c.__init__)}
        component = cls(*args, **own, **{k: v for k, v in context.items() if k in taken})
        if self.wrap is None:
            return component
        shared = {name: value for name, value in params.items() if name in _names(self.wrap)}
        return self.wrap(component, **{k: v for k, v in context.items() if k in _names(self.wrap)}, **shared)

    def make(self, kind: str, *args, **settings):
        """Build a ``kind`` in one call (code and tests): ``settings`` are its parameters and
        any of the family's context."""
        params = {k: v for k, v in settings.items() if k not in self.context}
        context = {k: v for k, v in settings.items() if k in self.context}
        return self.build(self.section_of(kind, params), *args, **context)

    def describe(self) -> list[dict]:
        """Every kind with its parameters' defaults and the first line of its docstring."""
        return [{"kind": kind, "parameters": {n: p.default for n, p in self.parameters(kind).items()},
                 "description": ((cls.__doc__ or "").strip().splitlines() or [""])[0]}
                for kind, cls in self.classes.items()]


def _up_the_chain(cls: type) -> list[type]:
    """The class and its ancestors for as long as each ``__init__`` passes ``**rest`` on."""
    chain = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        chain.append(klass)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
            break
    return chain


def _keyword_only(function: Callable) -> list[Parameter]:
    hints = typing.get_type_hints(function, include_extras=True)
    found = []
    for p in inspect.signature(function).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
            limits = getattr(hints.get(p.name), "__metadata__", ())
            found.append(Parameter(p.name, p.default, tuple(limits)))
    return found


def _names(function: Callable | None) -> set[str]:
    if function is None:
        return set()
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}
