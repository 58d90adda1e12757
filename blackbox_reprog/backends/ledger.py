"""The ledger: the one place that counts queries and enforces the budget.

A *query* is one example sent to the model; a *call* is one request (a batch split into
several calls is several calls). Every query is booked under a purpose. A remote backend may
send a request again after a timeout or a 5xx: those examples are booked as *retried* — the
server may bill them, so they count against the budget like any other attempt. The budget
covers every purpose except ``test``: the final test pass is reported beside it, not in it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .base import Backend, Prediction
from ..errors import Refusal

PURPOSES: tuple[str, ...] = ("probe", "train", "label-map", "validate", "test")
UNBUDGETED: frozenset[str] = frozenset({"test"})


class BudgetExceeded(RuntimeError):
    """A call was refused because it would have spent more than the budget (nothing was sent)."""


@dataclass
class Tally:
    queries: int = 0         # examples asked for, first attempts (answered from the store included)
    stored: int = 0          # of those, answered from the answer store: paid for by an earlier process
    retried: int = 0         # examples sent again (possibly billed again)
    calls: int = 0           # requests, retries included
    seconds: float = 0.0

    @property
    def attempts(self) -> int:
        return self.queries + self.retried

    def as_dict(self) -> dict:
        return {"queries": self.queries, "stored": self.stored, "retried": self.retried, "calls": self.calls,
                "seconds": round(self.seconds, 3)}


class Ledger:
    """Wraps a backend; every query goes through ``query(x, purpose)``."""

    def __init__(self, backend: Backend, budget: int | None):
        if budget is not None and budget < 0:
            raise Refusal(f"expected a budget of 0 or more queries, got {budget}")
        self.backend = backend
        self.budget = budget
        #: a journal.Recorder: answers already paid for are read back, new calls journaled
        self.recorder = None
        self.tallies = {purpose: Tally() for purpose in PURPOSES}
        self._lock = threading.Lock()          # a remote backend books from several threads

    def record_with(self, recorder) -> None:
        """Journal every call through ``recorder`` (a journal.Recorder), which also books what
        earlier processes of this run sent (``book_spent``) as the replay reaches it."""
        self.recorder = recorder
        recorder.ledger = self

    def book_spent(self, purpose: str, queries: int) -> None:
        """One call an earlier process of this run sent, possibly billed, that the replay
        will not send again: booked as retried, without asking the budget — it is spent."""
        with self._lock:
            self.tallies[purpose].retried += queries
            self.tallies[purpose].calls += 1

    @property
    def spent(self) -> int:
        """Attempted queries (retries included) that count against the budget."""
        return sum(t.attempts for p, t in self.tallies.items() if p not in UNBUDGETED)

    @property
    def remaining(self) -> int | float:
        return float("inf") if self.budget is None else self.budget - self.spent

    def can_afford(self, queries: int, purpose: str = "train") -> bool:
        return purpose in UNBUDGETED or queries <= self.remaining

    def _admit(self, queries: int, purpose: str) -> None:
        if purpose not in self.tallies:
            raise ValueError(f"expected a purpose among {', '.join(PURPOSES)}, got {purpose!r}")
        if not self.can_afford(queries, purpose):
            raise BudgetExceeded(
                f"a {purpose} call of {queries} queries would exceed the budget "
                f"({self.spent} of {self.budget} spent)")

    def query(self, x: np.ndarray, purpose: str) -> Prediction:
        self.backend.input_spec.check(x)
        if self.recorder is not None:                # what earlier processes spent on these calls counts first
            self.recorder.book_earlier(x)
        self._admit(len(x), purpose)                 # the whole batch must fit before any call
        tally = self.tallies[purpose]
        unsent = [len(x)]                            # admitted first attempts not yet sent

        def sent(queries: int, retry: bool = False, stored: bool = False) -> None:
            """Booked as each call leaves, paid or not; an answer read from the store is booked
            like the query that bought it, so a resumed run counts (and stops) exactly as an
            uninterrupted one."""
            with self._lock:
                if retry:      # a retry must fit beside the rest of the batch, which was admitted
                    self._admit(queries + unsent[0], purpose)
                    tally.retried += queries
                else:
                    tally.queries += queries
                    unsent[0] -= queries
                tally.stored += queries if stored else 0
                tally.calls += 0 if stored else 1

        started = time.perf_counter()
        try:
            if self.recorder is not None:
                return self.recorder.query(x, purpose, sent)
            return self.backend.query(x, on_send=sent)
        finally:
            tally.seconds += time.perf_counter() - started

    def spend(self, queries: int, purpose: str) -> None:
        """Book work done outside ``query`` — a white-box forward+backward pass counts one query
        per example, so both paths share one axis. Refused, like a query, if over budget."""
        self._admit(queries, purpose)
        self.tallies[purpose].queries += queries
        self.tallies[purpose].calls += 1

    def add_seconds(self, purpose: str, seconds: float) -> None:
        """Time spent on work booked with ``spend`` (a white-box pass), beside the queries'."""
        self.tallies[purpose].seconds += seconds

    def summary(self) -> dict:
        """Per purpose and in total: queries, calls, seconds; plus the budget."""
        out = {purpose: tally.as_dict() for purpose, tally in self.tallies.items()}
        out["total"] = {
            "queries": sum(t.queries for t in self.tallies.values()),
            "stored": sum(t.stored for t in self.tallies.values()),
            "retried": sum(t.retried for t in self.tallies.values()),
            "calls": sum(t.calls for t in self.tallies.values()),
            "seconds": round(sum(t.seconds for t in self.tallies.values()), 3),
        }
        out["budgeted"] = self.spent
        out["budget"] = self.budget
        return out
