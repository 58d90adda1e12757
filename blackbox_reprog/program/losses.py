"""Losses on target-class scores: cross-entropy, class-balanced focal loss (BAR), multi-class
margin, and the 0-1 error.

All take target logits (..., B, K) and labels (B,) and return one loss per leading row,
so a whole population of perturbed programs is scored in one call.

For partial outputs: ``margin`` depends only on score differences, so the floored scores of
classes outside a top-k answer simply tie; ``zero-one`` needs only the top-1 target class and
suits evolutionary search on label-only APIs.
"""
from __future__ import annotations

from typing import Annotated

import torch

from ..components import AtLeast, Family
from ..errors import Refusal

#: loss kind → class; the run passes the training set's class counts to those that take them
LOSSES = Family("loss", context=("class_counts",))


@LOSSES.register
class CrossEntropy:
    """Cross-entropy on the target scores."""

    kind = "ce"

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """logits (..., B, K), y (B,) → (...) mean negative log-likelihood."""
        log_p = torch.log_softmax(logits, dim=-1)                    # (..., B, K)
        picked = log_p.gather(-1, y.expand(*log_p.shape[:-1])[..., None])[..., 0]  # (..., B)
        return -picked.mean(dim=-1)


@LOSSES.register
class FocalLoss:
    """Class-balanced focal loss: w_y · (1 − p_y)^γ · (−log p_y), w_j ∝ 1/n_j.

    BAR (Tsai et al., 2020) used γ = 2 with inverse-frequency weights."""

    kind = "focal"

    def __init__(self, *, gamma: Annotated[float, AtLeast(0)] = 2.0, class_counts: torch.Tensor | None = None):
        self.gamma = float(gamma)
        self.weights = None
        if class_counts is not None:
            w = 1.0 / torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1)
            self.weights = w / w.sum() * len(w)                      # (K,) mean weight 1

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, dim=-1)
        log_py = log_p.gather(-1, y.expand(*log_p.shape[:-1])[..., None])[..., 0]  # (..., B)
        loss = (1 - log_py.exp()).pow(self.gamma) * -log_py
        if self.weights is not None:
            loss = loss * self.weights[y]
        return loss.mean(dim=-1)


@LOSSES.register
class Margin:
    """Multi-class hinge (Crammer–Singer): mean of max(0, κ + max_{j≠y} s_j − s_y).

    Zero once the true class leads every other by κ. It compares scores, never normalises them,
    so it behaves the same on log-probabilities, raw logits or floored top-k scores."""

    kind = "margin"

    def __init__(self, *, margin: Annotated[float, AtLeast(0)] = 1.0):
        if not margin >= 0:
            raise Refusal(f"expected a margin κ ≥ 0, got {margin}")
        self.margin = float(margin)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        index = y.expand(*logits.shape[:-1])[..., None]                       # (..., B, 1)
        true = logits.gather(-1, index)[..., 0]                               # (..., B)
        others = logits.scatter(-1, index, float("-inf"))                     # (..., B, K) true masked
        best_other = others.max(dim=-1).values                                # (..., B)
        return (self.margin + best_other - true).clamp_min(0).mean(dim=-1)


@LOSSES.register
class ZeroOne:
    """The error rate: mean of argmax_j s_j ≠ y (ties go to the lowest class index).

    Not differentiable: it is piecewise constant in the program, so a zeroth-order estimator
    sees a difference of 0 unless a perturbation flips some example's top class, and its
    gradient estimates are mostly 0. Meant for evolutionary / comparison-based search
    (nevergrad), which only needs to rank candidates, e.g. on label-only APIs."""

    kind = "zero-one"

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wrong = logits.argmax(dim=-1) != y                                    # (..., B)
        return wrong.float().mean(dim=-1)
