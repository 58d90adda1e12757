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


def signal_module():
    """``signal_model`` as a torch module, for the torch plugin (gradients); counts in CALLS too."""
    import torch

    class SignalModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.from_numpy(SIGNAL_WEIGHTS.copy()))   # (L, C)

        def forward(self, x):                                                          # (B, L) -> (B, C)
            CALLS["count"] += 1
            CALLS["examples"] += len(x)
            z = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True, unbiased=False) + 1e-8)
            return z @ self.weight

    return SignalModule()
