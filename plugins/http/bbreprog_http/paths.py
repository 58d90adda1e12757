"""Which request paths may follow an endpoint's base URL.

A path comes from options (a template's ``path`` and ``health_path``, a model's name and
version): joined to the base URL it must name a resource on that origin and nothing else.
Text that a URL parser or a server could read as another host (``@host``, ``//host``,
``\\host``), as a climb out of the base path (``..``, ``%2e%2e``), as an encoded separator
(``%2F``, ``%5C``, ``%40``) or as a second request line (spaces, CR, LF) is refused outright
rather than escaped: nothing a real endpoint needs looks like that, and a refusal names the
option to fix.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

from blackbox_reprog.errors import Refusal

_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|40)", re.IGNORECASE)
_FORBIDDEN = (("\\", "a backslash"), ("@", "'@'"), ("#", "'#'"), ("//", "'//'"))


def path_problem(path: object) -> str | None:
    """What is wrong with ``path`` as the part of a URL after its origin (None: nothing), as a
    phrase that follows "which", e.g. "holds a dot segment"."""
    if not isinstance(path, str):
        return f"is a {type(path).__name__}, not text"
    if not path.startswith("/") or path.startswith("//"):
        return "does not start with a single '/'"
    if any(not "!" <= c <= "~" for c in path):
        return "holds a space, a line break, a control character or a character beyond ASCII"
    for text, name in _FORBIDDEN:
        if text in path:
            return f"holds {name}"
    if _ENCODED_SEPARATOR.search(path):
        return "holds a percent-encoded '/', '\\' or '@'"
    decoded = unquote(path)
    if any(ord(c) < 0x20 or c == "\x7f" for c in decoded):
        return "holds a percent-encoded control character"
    route = path.partition("?")[0]                    # the query is not a path: its dots are data
    if any(unquote(segment) in (".", "..") for segment in route.split("/")):
        return "holds a dot segment ('.' or '..', perhaps percent-encoded)"
    return None


def segment_problem(value: object) -> str | None:
    """What is wrong with ``value`` as one segment of a path, such as a model's name."""
    text = str(value)
    for char in "/?":                                 # another segment, or the start of a query
        if char in text:
            return f"holds {char!r}"
    return path_problem("/" + text)


def require_path(option: str, value: object) -> str:
    """``value`` when it is a path on the endpoint itself; else a refusal naming ``option``."""
    problem = path_problem(value)
    if problem:
        raise Refusal(f"expected backend.options.{option} to be a path on the endpoint, got {value!r}, "
                      f"which {problem}")
    return value


def require_segment(option: str, value: object) -> str:
    """``value`` as text when it is one path segment; else a refusal naming ``option``."""
    problem = segment_problem(value)
    if problem:
        raise Refusal(f"expected backend.options.{option} to be one segment of a path, got {value!r}, "
                      f"which {problem}")
    return str(value)
