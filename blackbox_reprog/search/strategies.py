"""How θ moves: the three search strategies the trainer can drive.

A search never queries the model: the trainer owns every query. A black-box search is asked
for the programs to score (``ask`` → an ``Asked`` holding (P, d) programs) and told their
losses (``tell``), which moves θ. They differ only in where the direction comes from, so a
comparison between them is fair:

- ``ZerothOrder``: an estimator proposes P perturbed programs; ĝ from their losses goes to a
  ``torch.optim`` step rule.
- ``Evolution``: a nevergrad optimizer asks a population and is told its losses; θ is the
  optimizer's recommendation.
- ``Autograd`` (white-box, ``exact``): no population to score. It is given an objective
  closure, (x, y) → (loss, log-probabilities) differentiable in θ, and takes the exact
  gradient step into the same step rule. The trainer counts one query per example.

``train.method`` names the search; its ``plan(config, backend, transform)`` checks the config
and builds what the search needs before any query, and returns a function of (θ, horizon)
building the search, ``horizon(population)`` being how many steps the budget pays for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..components import Family
from ..errors import Refusal
from .estimators import ESTIMATORS, Estimator
from .step_rules import STEP_RULES, StepRule

#: search kind (``train.method``) → class
SEARCHES = Family("train.method")

#: a white-box objective on a chunk of the batch: (x (b, ...), y (b,)) → (loss (), log-probs (b, C))
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Asked:
    """What one step of a black-box search scores: the programs, and what ``tell`` needs back."""

    thetas: torch.Tensor          # (P, d)
    context: Any = None           # the estimator's Proposal, nevergrad's candidates


class Search:
    kind: str = ""
    population: int = 1          # programs evaluated per example in one step
    exact: bool = False          # True: takes an objective closure (``descend``), not ask/tell
    #: what a step does with non-finite losses: skip the update, or tell them as the worst
    non_finite: str = "skipped"

    def ask(self) -> Asked:
        """The programs to score on this step's batch."""
        raise NotImplementedError

    def tell(self, asked: Asked, losses: torch.Tensor) -> None:
        """Their losses (P,): θ moves."""
        raise NotImplementedError

    @classmethod
    def plan(cls, config, backend, transform) -> Callable[[torch.Tensor, Callable[[int], int]], "Search"]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


def _apply_gradient(theta: torch.Tensor, gradient: torch.Tensor, step_rule, schedule) -> None:
    step_rule.zero_grad()
    theta.grad = gradient
    step_rule.step()
    schedule.step()


@SEARCHES.register
class ZerothOrder(Search):
    kind = "blackbox"

    def __init__(self, theta: torch.Tensor, estimator: Estimator, rule: StepRule, steps: int,
                 generator: torch.Generator):
        self.theta, self.estimator, self.rule_kind = theta, estimator, rule.kind
        self.step_rule, self.schedule = rule.start(theta, steps)
        self.generator = generator
        self.population = estimator.population

    @classmethod
    def plan(cls, config, backend, transform):
        estimator = ESTIMATORS.build(config.estimator, transform.num_params)
        rule = STEP_RULES.build(config.optimizer)
        return lambda theta, horizon: cls(theta, estimator, rule, horizon(estimator.population),
                                          torch.Generator().manual_seed(config.seed))   # perturbations

    def describe(self) -> dict:
        return {"method": self.kind, "estimator": self.estimator.kind, "population": self.population,
                "optimizer": self.rule_kind}

    def ask(self) -> Asked:
        proposal = self.estimator.propose(self.theta.detach(), self.generator)
        return Asked(proposal.thetas, proposal)                                   # (P, d)

    def tell(self, asked: Asked, losses: torch.Tensor) -> None:
        if torch.isfinite(losses).all():          # never feed NaN/inf to a step rule
            _apply_gradient(self.theta, self.estimator.estimate(asked.context, losses), self.step_rule,
                            self.schedule)


@SEARCHES.register
class Autograd(Search):
    """White-box: the exact gradient of the objective. The batch goes through in chunks of
    ``chunk_size`` examples whose gradients add up to the batch's (every loss is a mean over
    examples): on a CPU, a batch of 32 EfficientNet-Lite0 images trains at 22 examples/s in
    chunks of 6 against 14/s at once (benchmarks/results/overhead.md), and in a third of the
    memory."""

    kind = "whitebox"
    exact = True

    def __init__(self, theta: torch.Tensor, rule: StepRule, steps: int, chunk_size: int = 256):
        self.theta, self.rule_kind = theta, rule.kind
        self.step_rule, self.schedule = rule.start(theta, steps)
        self.chunk_size = int(chunk_size)

    @classmethod
    def plan(cls, config, backend, transform):
        if backend.output_kind not in ("logits", "probs") or not backend.capabilities.differentiable:
            raise Refusal(f"expected a backend with gradients (the torch plugin) for train.method "
                          f"'whitebox', got {backend.name} answering {backend.output_kind}")
        if config.loss.kind == "zero-one":
            raise Refusal("expected a differentiable loss (ce, focal or margin) for train.method "
                          "'whitebox', got 'zero-one'")
        rule = STEP_RULES.build(config.optimizer)
        return lambda theta, horizon: cls(theta, rule, horizon(1), chunk_size=backend.max_batch)

    def describe(self) -> dict:
        return {"method": self.kind, "optimizer": self.rule_kind, "population": 1}

    def descend(self, objective: Objective, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One exact step on the batch; returns (its loss (1,), log-probs at θ (B, C))."""
        self.step_rule.zero_grad()
        loss, parts = torch.zeros(()), []
        for i in range(0, len(xb), self.chunk_size):
            x, y = xb[i:i + self.chunk_size], yb[i:i + self.chunk_size]
            chunk_loss, log_probs = objective(x, y)                                 # (), (b, C)
            chunk_loss = chunk_loss * (len(x) / len(xb))
            chunk_loss.backward()                 # θ.grad accumulates over the chunks
            loss, parts = loss + chunk_loss.detach(), parts + [log_probs.detach()]
        if torch.isfinite(self.theta.grad).all():
            self.step_rule.step()
            self.schedule.step()
        return loss[None], torch.cat(parts)                                         # (1,), (B, C)


@SEARCHES.register
class Evolution(Search):
    """nevergrad ask/tell. Guards its traps: ``ask()`` never stops at a budget (the ledger
    does); a single −inf or NaN would become the recommendation forever, so non-finite losses
    are replaced by the worst finite loss of the population plus one before ``tell``; the
    whole population is asked, scored in one call and told before the next ask (DiagonalCMA
    asked one at a time never moved its mean in our tests); everything runs in the calling
    thread (NGOpt's meta-model hung at exit in a worker thread with numpy 2.4)."""

    kind = "evolution"
    non_finite = "told as the worst finite loss + 1"

    def __init__(self, theta: torch.Tensor, optimizer: str, *, popsize: int, sigma: float, seed: int,
                 generations: int):
        import nevergrad as ng

        self.theta, dim = theta, theta.numel()
        if optimizer not in ng.optimizers.registry:
            import difflib
            close = difflib.get_close_matches(optimizer, list(ng.optimizers.registry), n=3)
            raise Refusal(f"unknown nevergrad optimizer {optimizer!r}; close names: {', '.join(close) or 'none'}")
        if optimizer == "CMA" and dim > 500:
            raise Refusal(f"expected at most 500 parameters for full CMA (it crashed with many parallel "
                          f"asks at 1,000), got {dim}; use DiagonalCMA or transform.subspace")
        parametrization = ng.p.Array(init=np.zeros(dim)).set_mutation(sigma=sigma)
        parametrization.random_state = np.random.RandomState(seed)
        self.optimizer = ng.optimizers.registry[optimizer](
            parametrization=parametrization, budget=max(generations, 1) * popsize, num_workers=popsize)
        self.name, self.population = optimizer, int(popsize)

    @classmethod
    def plan(cls, config, backend, transform):
        ev = config.evolution
        return lambda theta, horizon: cls(theta, ev.optimizer, popsize=ev.popsize, sigma=ev.sigma,
                                          seed=config.seed, generations=horizon(ev.popsize))

    def describe(self) -> dict:
        return {"method": self.kind, "optimizer": self.name, "population": self.population}

    def ask(self) -> Asked:
        candidates = [self.optimizer.ask() for _ in range(self.population)]
        thetas = torch.as_tensor(np.stack([c.value for c in candidates]), dtype=torch.float32)  # (P, d)
        return Asked(thetas, candidates)

    def tell(self, asked: Asked, losses: torch.Tensor) -> None:
        told = losses.double().numpy().copy()
        finite = np.isfinite(told)
        told[~finite] = (told[finite].max() + 1.0) if finite.any() else 1e6
        for candidate, value in zip(asked.context, told):
            self.optimizer.tell(candidate, float(value))
        with torch.no_grad():
            self.theta.copy_(torch.as_tensor(self.optimizer.recommend().value, dtype=torch.float32))
