"""Turn any backend answer into log-probabilities over the source classes.

Label maps and losses work on one representation, (B, C) log-probabilities, whatever the
API returned:
- ``logits``: log-softmax.
- ``probs``: log of the probabilities, floored at ``FLOOR`` so a zero does not become −inf.
- ``topk``: the k known scores are kept; the missing probability mass 1 − Σ top-k is spread
  evenly over the other C − k classes, never below ``FLOOR``.
- ``label``: the top-1 class gets 1 − ε, the others share ε (ε = ``LABEL_EPSILON``).
"""
from __future__ import annotations

import numpy as np
import torch

from .backend import Prediction

FLOOR = 1e-8
LABEL_EPSILON = 0.1


def source_log_probs(prediction: Prediction) -> torch.Tensor:
    """Prediction of B examples → (B, C) float32 log-probabilities."""
    kind, classes = prediction.kind, prediction.num_classes
    if kind == "logits":
        return torch.log_softmax(torch.as_tensor(prediction.scores, dtype=torch.float32), dim=1)
    if kind == "probs":
        return torch.as_tensor(np.log(np.clip(prediction.scores, FLOOR, None)), dtype=torch.float32)
    rows = np.arange(len(prediction))[:, None]                        # (B, 1)
    if kind == "topk":
        scores = np.clip(prediction.scores, FLOOR, None)              # (B, k)
        k = scores.shape[1]
        rest = np.clip(1.0 - scores.sum(axis=1, keepdims=True), 0.0, None) / max(classes - k, 1)
        probs = np.broadcast_to(np.clip(rest, FLOOR, None), (len(prediction), classes)).copy()
        probs[rows, prediction.labels] = scores                       # (B, C)
    elif kind == "label":
        probs = np.full((len(prediction), classes), LABEL_EPSILON / max(classes - 1, 1))
        probs[rows, prediction.labels[:, :1]] = 1.0 - LABEL_EPSILON   # (B, C)
    else:
        raise ValueError(f"expected an output kind among logits, probs, topk, label, got {kind!r}")
    return torch.as_tensor(np.log(probs), dtype=torch.float32)
