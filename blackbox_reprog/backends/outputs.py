"""Turn any backend answer into log-probabilities over the source classes.

Label maps and losses work on one representation, (B, C) log-probabilities, whatever the
API returned:
- ``logits``: log-softmax.
- ``probs``: log of the probabilities, floored at ``FLOOR`` so a zero does not become −inf.
- ``topk``: the k scores are read as probabilities of their labels (not logits, not log-probs:
  ``DegradedBackend`` and the usual APIs answer probabilities). Each score is floored at
  ``FLOOR`` (a negative or zero score would be no probability at all). If a row's k scores
  then sum above 1 + ``TOPK_TOLERANCE`` they cannot be probabilities of one distribution (an
  API that rounds up, or answers unnormalised confidences): that row is divided by its sum, so
  the k known classes keep their ratios and take all the mass. A sum up to 1 + tolerance is
  kept as is (rounding). The missing mass max(0, 1 − Σ top-k) is then spread evenly over the
  other C − k classes, never below ``FLOOR``: a row whose k scores already sum to 1 gives
  every unseen class ``FLOOR``. Rows are not renormalised after flooring, so they can sum to
  slightly more than 1 (by at most C·FLOOR + tolerance).
- ``label``: the top-1 class gets 1 − ε, the others share ε evenly (ε = ``LABEL_EPSILON``),
  i.e. ε / (C − 1) each. ε keeps log-probabilities finite and says the API's top-1 is right
  with probability 1 − ε; only the top-1 is known, so the argmax is the one trustworthy bit.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Prediction
from ..errors import Refusal

FLOOR = 1e-8
LABEL_EPSILON = 0.1
#: top-k scores may sum this much above 1 (rounding) before a row is renormalised
TOPK_TOLERANCE = 1e-3


def source_log_probs(prediction: Prediction) -> torch.Tensor:
    """Prediction of B examples → (B, C) float32 log-probabilities."""
    kind, classes = prediction.kind, prediction.num_classes
    if kind == "logits":
        return torch.log_softmax(torch.as_tensor(prediction.scores, dtype=torch.float32), dim=1)
    if kind == "probs":
        return torch.as_tensor(np.log(np.clip(prediction.scores, FLOOR, None)), dtype=torch.float32)
    rows = np.arange(len(prediction))[:, None]                        # (B, 1)
    if kind == "topk":
        scores = np.clip(prediction.scores.astype(np.float64), FLOOR, None)  # (B, k)
        total = scores.sum(axis=1, keepdims=True)                     # (B, 1)
        # more than all the mass: not probabilities of one distribution, so rescale the row
        scores = scores / np.where(total > 1.0 + TOPK_TOLERANCE, total, 1.0)
        k = scores.shape[1]
        rest = np.clip(1.0 - scores.sum(axis=1, keepdims=True), 0.0, None) / max(classes - k, 1)
        probs = np.broadcast_to(np.clip(rest, FLOOR, None), (len(prediction), classes)).copy()
        probs[rows, prediction.labels] = scores                       # (B, C)
    elif kind == "label":
        probs = np.full((len(prediction), classes), LABEL_EPSILON / max(classes - 1, 1))
        probs[rows, prediction.labels[:, :1]] = 1.0 - LABEL_EPSILON   # (B, C)
    else:
        raise Refusal(f"expected an output kind among logits, probs, topk, label, got {kind!r}")
    return torch.as_tensor(np.log(probs), dtype=torch.float32)
