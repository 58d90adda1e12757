"""blackbox-reprog: reprogram models you can only query.

Learn an input program and a label map against a frozen model reachable only through
queries (a local ONNX file, a remote prediction API, any Python callable), with zeroth-order
gradient estimates, counting every query against a budget.
"""
from .backends.base import Backend, BackendUnavailable, CallableBackend, InputError, InputSpec, Prediction
from .run.config import RunConfig, load_config
from .backends.ledger import BudgetExceeded, Ledger

__version__ = "0.1.0"

__all__ = ["Backend", "BackendUnavailable", "CallableBackend", "InputError", "InputSpec", "Prediction", "RunConfig",
           "load_config", "Ledger", "BudgetExceeded", "train"]


def train(config: RunConfig | None = None, *, backend: Backend | None = None, **overrides):
    """Train from a config (or defaults plus keyword overrides); returns (run folder, result)."""
    from .run.runner import run
    if config is not None and overrides:
        raise TypeError(f"expected either a config or keyword overrides, got both ({', '.join(overrides)})")
    if config is None:
        config = load_config(**overrides)
    return run(config, backend=backend)
