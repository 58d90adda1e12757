"""What the server counts and decides per request, under one lock: the bill (once per
idempotency key), the fault a billed request meets, the API key check, and the answers kept
for resends under an idempotency key."""
from __future__ import annotations

import hmac
import random
import threading
from typing import Iterable, Mapping

FAULTS = ("429", "500", "timeout", "malformed")


class Meter:
    """The bill and the fault draws of one server; ``faults`` among FAULTS, drawn with
    probability ``fault_rate`` by a ``random.Random(seed)``. With ``api_key``, a request must
    carry it in ``key_header`` ("Authorization": as ``Bearer <key>``)."""

    def __init__(self, *, fault_rate: float, faults: Iterable[str], seed: int, api_key: str | None,
                 key_header: str):
        self.fault_rate, self.faults = fault_rate, tuple(faults)
        self._api_key, self._key_header = api_key, key_header
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts = {"billed": 0, "answered": 0, "requests": 0, "replayed": 0,
                        "faults": {f: 0 for f in FAULTS}, "unauthorized": 0}
        self._billed_keys: set[str] = set()
        self._answers: dict[str, bytes] = {}       # idempotency key -> the answer's body

    def billing(self) -> dict:
        """{"billed", "answered", "requests", "replayed", "faults": {kind: n}, "unauthorized"}:
        examples billed (every valid batch, faulted or not), examples answered without a fault,
        requests billed, examples answered again from an idempotency key's stored answer,
        faults injected, requests refused for a missing or wrong key."""
        with self._lock:
            return {**self._counts, "faults": dict(self._counts["faults"])}

    def bill(self, examples: int, key: str | None = None) -> str | None:
        """Bill a valid batch (once per idempotency key), then draw its fault (None: answer
        normally). One lock for both, so the n-th request always meets the n-th draw."""
        with self._lock:
            if key is None or key not in self._billed_keys:
                self._counts["billed"] += examples
                if key is not None:
                    self._billed_keys.add(key)
            self._counts["requests"] += 1
            fault = None
            if self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.faults)
                self._counts["faults"][fault] += 1
            return fault

    def answered(self, examples: int, key: str | None = None, body: bytes = b"") -> None:
        """Count a batch answered without a fault; keep its body for resends under ``key``."""
        with self._lock:
            self._counts["answered"] += examples
            if key is not None:
                self._answers[key] = body

    def replay(self, key: str | None, examples: int) -> bytes | None:
        """The stored answer to an idempotency key already answered, counted as replayed."""
        with self._lock:
            body = self._answers.get(key) if key is not None else None
            if body is not None:
                self._counts["replayed"] += examples
            return body

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether the request carries the key (always, without one); a refusal is counted."""
        if self._api_key is None:
            return True
        given = headers.get(self._key_header, "")
        if self._key_header.lower() == "authorization":
            scheme, _, given = given.partition(" ")
            if scheme.lower() != "bearer":
                given = ""
        if hmac.compare_digest(given.strip().encode(), self._api_key.encode()):
            return True
        with self._lock:
            self._counts["unauthorized"] += 1
        return False
