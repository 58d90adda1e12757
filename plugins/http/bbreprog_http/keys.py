"""API keys: read from an environment variable or an owner-only file, never from the command
line or a config value, and never shown — not in a repr, a log, an error or a result file."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from blackbox_reprog.errors import Refusal


class ApiKey:
    """A key and the header that carries it. ``repr`` and ``str`` name where it came from only."""

    def __init__(self, secret: str, source: str, header: str = "Authorization", prefix: str | None = None):
        bad = next((i for i, c in enumerate(secret) if not ("!" <= c <= "~")), None)
        if bad is not None:
            raise Refusal(f"expected the API key from {source} as one line of printable ASCII, got a "
                          f"space, line break or other character at position {bad}")
        self._secret, self.source, self.header = secret, source, header
        self.prefix = ("Bearer " if header.lower() == "authorization" else "") if prefix is None else prefix

    @classmethod
    def load(cls, *, env: str = "", file: str = "", header: str = "Authorization",
             prefix: str | None = None) -> "ApiKey | None":
        """The key named by ``env`` (a variable's name) or ``file`` (a path); None when neither."""
        if env and file:
            raise Refusal(f"expected one of backend.options key_env or key_file, got both ({env!r} and {file!r})")
        if env:
            secret = os.environ.get(env, "").strip()
            if not secret:
                raise Refusal(f"expected the API key in the environment variable {env}, got it unset or empty")
            return cls(secret, f"env:{env}", header, prefix)
        if file:
            path = Path(file).expanduser()
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
            except OSError as error:
                raise Refusal(f"expected a readable key file at {path}, got {error.strerror}") from None
            if mode & 0o077:
                raise Refusal(f"expected the key file {path} readable by its owner only (chmod 600), "
                              f"got mode {mode:04o}")
            secret = path.read_text().strip()
            if not secret:
                raise Refusal(f"expected an API key in {path}, got an empty file")
            return cls(secret, f"file:{path}", header, prefix)
        return None

    def headers(self) -> dict[str, str]:
        return {self.header: f"{self.prefix}{self._secret}"}

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the key replaced, for messages that quote a server."""
        return text.replace(self._secret, "***")

    def scrub_bytes(self, content: bytes) -> bytes:
        """A server's raw answer with the key replaced, before any of it can reach a message."""
        return content.replace(self._secret.encode(), b"***")

    def __repr__(self) -> str:
        return f"ApiKey({self.source}, header={self.header!r})"

    __str__ = __repr__

    def __reduce__(self):                      # a key must never be pickled into a checkpoint
        raise TypeError("expected no API key in what is pickled, got an ApiKey, which cannot be pickled")
