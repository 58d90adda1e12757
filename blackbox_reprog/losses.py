"""Losses on target-class scores: cross-entropy and class-balanced focal loss (BAR).

Both take target logits (..., B, K) and labels (B,) and return one loss per leading row,
so a whole population of perturbed programs is scored in one call.
"""
from __future__ import annotations

import torch


class CrossEntropy:
    kind = "ce"

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """logits (..., B, K), y (B,) → (...) mean negative log-likelihood."""
        log_p = torch.log_softmax(logits, dim=-1)                    # (..., B, K)
        picked = log_p.gather(-1, y.expand(*log_p.shape[:-1])[..., None])[..., 0]  # (..., B)
        return -picked.mean(dim=-1)


class FocalLoss:
    """Class-balanced focal loss: w_y · (1 − p_y)^γ · (−log p_y), w_j ∝ 1/n_j.

    BAR (Tsai et al., 2020) used γ = 2 with inverse-frequency weights."""

    kind = "focal"

    def __init__(self, gamma: float = 2.0, class_counts: torch.Tensor | None = None):
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


def make_loss(kind: str, *, gamma: float = 2.0, class_counts=None):
    if kind == "ce":
        return CrossEntropy()
    if kind == "focal":
        return FocalLoss(gamma, class_counts)
    raise ValueError(f"unknown loss {kind!r}; expected one of: ce, focal")
