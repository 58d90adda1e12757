"""Backend plugins, found through the ``blackbox_reprog.backends`` entry-point group.

A third party registers a backend with one line of its pyproject::

    [project.entry-points."blackbox_reprog.backends"]
    mybackend = "my_package:MyBackend"

The class is built with ``MyBackend.from_config(model, **options)``. Entry points are read
once; a plugin that fails to import is reported, not fatal. What a plugin can do is read from
its class's ``capabilities``: core names no plugin.
"""
from __future__ import annotations

import difflib
import functools
from importlib.metadata import entry_points

from .base import Backend, Capabilities
from ..errors import Refusal

GROUP = "blackbox_reprog.backends"


class UnknownBackend(Refusal, LookupError):
    """No installed plugin has that name."""


@functools.cache
def installed() -> dict[str, object]:
    """name → entry point, for every installed backend plugin."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def describe_installed() -> list[dict]:
    """One row per plugin: name, where it comes from, and whether it imports."""
    rows = []
    for name, ep in sorted(installed().items()):
        try:
            cls = ep.load()
            rows.append({"name": name, "target": ep.value, "status": "ok",
                         "description": ((cls.__doc__ or "").strip().splitlines() or [""])[0]})
        except Exception as error:                                  # a broken plugin warns
            rows.append({"name": name, "target": ep.value, "status": f"fails to import: {error}",
                         "description": ""})
    return rows


def backend_class(name: str) -> type[Backend]:
    plugins = installed()
    if name not in plugins:
        lowered = {installed_name.lower(): installed_name for installed_name in plugins}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1)]
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownBackend(f"unknown backend {name!r}; {hint}installed: {', '.join(sorted(plugins)) or 'none'}")
    try:
        return plugins[name].load()
    except Exception as error:
        raise UnknownBackend(f"backend {name!r} is installed but fails to import: {error}") from None


def create_backend(name: str, model: str, **options) -> Backend:
    cls = backend_class(name)
    try:
        return cls.from_config(model, **options)
    except TypeError as error:               # an unknown or mistyped backend.options entry
        raise Refusal(f"expected backend.options that the {name} backend accepts, got "
                      f"{sorted(options)}: {error}") from None


def declared(name: str) -> Capabilities | None:
    """The capabilities the class of backend ``name`` declares; None when no installed plugin
    of that name imports."""
    try:
        return backend_class(name).capabilities
    except UnknownBackend:
        return None


def zoo_backend_with_gradients(name: str) -> str:
    """The backend that serves a zoo model for a run that needs gradients, when the config
    names backend ``name``: ``name`` itself unless it serves the zoo's models without gradients
    (onnx), else the first installed backend, by name, declaring both ``zoo_models`` and
    ``differentiable`` (torch): the same network from the same weights. ``name`` when there is
    none (the white-box path then refuses it for want of gradients)."""
    capabilities = declared(name)
    if capabilities is None or capabilities.differentiable or not capabilities.zoo_models:
        return name
    for other in sorted(installed()):
        found = declared(other)
        if found is not None and found.zoo_models and found.differentiable:
            return other
    return name
