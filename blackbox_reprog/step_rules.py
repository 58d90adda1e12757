"""Step rules: ordinary ``torch.optim`` optimizers fed with ĝ, plus learning-rate schedules.

Because the step rule only ever sees ``param.grad``, the black-box path (ĝ from an estimator)
and the white-box path (autograd) share it exactly.
"""
from __future__ import annotations

import math

import torch

from .errors import Refusal


class SignSGD(torch.optim.Optimizer):
    """ZO-signSGD: θ ← θ − η·sign(ĝ) (Liu et al., 2019); robust to the scale of noisy estimates."""

    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad), alpha=-group["lr"])


def make_optimizer(kind: str, params, *, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamm":   # ZO-AdaMM (Chen et al., 2019): Adam with the max of second moments
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9), amsgrad=True)
    if kind == "signsgd":
        return SignSGD(params, lr=lr)
    raise Refusal(f"unknown optimizer {kind!r}; expected one of: sgd, adam, adamm, signsgd")


def make_schedule(kind: str, optimizer, *, total_steps: int, decay: float = 0.96,
                  offset: float = 1.0, power: float = 0.4):
    """Multiplicative factor on the base learning rate at step k (0-based):
    constant 1; exp decay^k; poly ((1 + o)/(k + 1 + o))^α (BlackVIP's a/(k + o)^α, normalised
    so step 0 uses the base rate); cosine ½(1 + cos(πk/K))."""
    if kind == "constant":
        factor = lambda k: 1.0
    elif kind == "exp":
        factor = lambda k: decay ** k
    elif kind == "poly":
        factor = lambda k: ((1 + offset) / (k + 1 + offset)) ** power
    elif kind == "cosine":
        factor = lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / max(total_steps, 1)))
    else:
        raise Refusal(f"unknown schedule {kind!r}; expected one of: constant, exp, poly, cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
