"""The ``bbreprog`` command line.

Exit codes: 0 success; 1 the run failed while running, or a bug (with its traceback); 2 bad
input (config, data, backend, budget, usage) — refused before any query was
spent; 3 the model stopped answering (a remote endpoint's circuit breaker opened) — a
checkpoint was written, try again later.
"""
from . import runs, programs, bench, models, catalog  # noqa: F401  (each registers its commands, in this order)
from .common import main
from .runs import DEMO

__all__ = ["main", "DEMO"]
