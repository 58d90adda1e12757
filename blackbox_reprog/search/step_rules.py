"""Step rules: ordinary ``torch.optim`` optimizers fed with ĝ, plus learning-rate schedules.

Because the step rule only ever sees ``param.grad``, the black-box path (ĝ from an estimator)
and the white-box path (autograd) share it exactly. A step rule is configured once (the
``optimizer`` section) and ``start``-ed on θ with the number of steps the budget pays for.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch

from ..components import Above, AtLeast, Family, OneOf

#: step rule kind → class (config section ``optimizer``)
STEP_RULES = Family("optimizer")

SCHEDULES = ("constant", "exp", "poly", "cosine")


class StepRule:
    """A torch optimizer on θ, with a schedule: a multiplicative factor on the base learning
    rate at step k (0-based): constant 1; exp decay^k; poly ((1 + o)/(k + 1 + o))^α (BlackVIP's
    a/(k + o)^α, normalised so step 0 uses the base rate); cosine ½(1 + cos(πk/K))."""

    kind: str = ""

    def __init__(self, *, lr: Annotated[float, Above(0)] = 0.05,
                 schedule: Annotated[str, OneOf(*SCHEDULES)] = "constant",
                 decay: float = 0.96, power: float = 0.4, offset: float = 1.0):
        self.lr, self.schedule = float(lr), schedule
        self.decay, self.power, self.offset = float(decay), float(power), float(offset)

    def optimizer(self, params) -> torch.optim.Optimizer:
        raise NotImplementedError

    def start(self, theta: torch.Tensor, total_steps: int):
        """(optimizer, scheduler) moving ``theta`` over a run of ``total_steps`` steps."""
        optimizer = self.optimizer([theta])
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor(total_steps))

    def factor(self, total_steps: int):
        decay, power, offset = self.decay, self.power, self.offset
        return {"constant": lambda k: 1.0,
                "exp": lambda k: decay ** k,
                "poly": lambda k: ((1 + offset) / (k + 1 + offset)) ** power,
                "cosine": lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / max(total_steps, 1))),
                }[self.schedule]


@STEP_RULES.register
class SGD(StepRule):
    """SGD with heavy-ball momentum."""

    kind = "sgd"

    def __init__(self, *, momentum: Annotated[float, AtLeast(0)] = 0.9, **rest):
        super().__init__(**rest)
        self.momentum = float(momentum)

    def optimizer(self, params):
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)


@STEP_RULES.register
class Adam(StepRule):
    """Adam (ZO-Adam when fed with ĝ)."""

    kind = "adam"

    def optimizer(self, params):
        return torch.optim.Adam(params, lr=self.lr)


@STEP_RULES.register
class AdaMM(StepRule):
    """ZO-AdaMM (Chen et al., 2019): Adam with the max of second moments, β = (0.9, 0.9)."""

    kind = "adamm"

    def optimizer(self, params):
        return torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.9), amsgrad=True)


@STEP_RULES.register
class SignStep(StepRule):
    """ZO-signSGD: θ ← θ − η·sign(ĝ) (Liu et al., 2019); robust to the scale of noisy estimates."""

    kind = "signsgd"

    def optimizer(self, params):
        return SignSGD(params, lr=self.lr)


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad), alpha=-group["lr"])
