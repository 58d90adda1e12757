"""Programs applied to targets and sent through the ledger: the one query path that training,
evaluation and prediction share.

A program θ turns target examples into the model's inputs (``transform``); the inputs go out
through the ledger under a purpose, and the answers come back as source-class
log-probabilities (``outputs.source_log_probs``).
"""
from __future__ import annotations

import numpy as np
import torch

from ..backends.ledger import Ledger
from ..backends.outputs import source_log_probs
from .transforms import Transform

#: examples per call when a whole split is scored under one program: bounds the memory of
#: large canvases
CHUNK = 256


def programs_log_probs(transform: Transform, thetas: torch.Tensor, x: torch.Tensor, ledger: Ledger,
                       purpose: str) -> torch.Tensor:
    """thetas (P, d), x (B, ...) → (P, B, C) source log-probabilities, one batched query."""
    with torch.no_grad():
        inputs = transform(thetas, x)                                     # (P, B, *source_shape)
    flat = inputs.reshape(-1, *inputs.shape[2:]).numpy().astype(ledger.backend.input_spec.dtype)
    return source_log_probs(ledger.query(flat, purpose)).view(len(thetas), len(x), -1)


def examples_log_probs(transform: Transform, theta: torch.Tensor, x: np.ndarray | torch.Tensor, ledger: Ledger,
                       purpose: str, chunk: int = CHUNK) -> torch.Tensor:
    """(N, C) source log-probabilities of N examples under one program θ (d,), in queries of
    at most ``chunk`` examples."""
    x = torch.as_tensor(x)
    theta = theta.detach()[None]                                          # (1, d)
    return torch.cat([programs_log_probs(transform, theta, x[i:i + chunk], ledger, purpose)[0]
                      for i in range(0, len(x), chunk)])
