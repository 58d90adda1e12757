"""Small real models for tests: plain numpy functions served through CallableBackend."""
from __future__ import annotations

import numpy as np

CALLS = {"count": 0, "examples": 0}

_rng = np.random.default_rng(1234)
SIGNAL_WEIGHTS = _rng.normal(size=(1024, 32)).astype(np.float32) / 32.0   # (L, C)


def signal_model(x: np.ndarray) -> np.ndarray:
    """(B, 1024) → (B, 32) logits of a fixed random linear model on the z-normalised frame."""
    CALLS["count"] += 1
    CALLS["examples"] += len(x)
    z = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-8)
    return z @ SIGNAL_WEIGHTS


def reset_calls() -> None:
    CALLS.update(count=0, examples=0)
