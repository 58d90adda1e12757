"""How θ moves: the three search strategies the trainer can drive.

Each strategy takes one step on a batch and reports the step's loss. They differ only in
where the direction comes from, so a comparison between them is fair:

- ``ZerothOrder``: an estimator proposes P perturbed programs, one batched query scores them,
  ĝ goes to a ``torch.optim`` step rule.
- ``Autograd`` (white-box): the exact gradient through transform → model → map → loss, into
  the same step rule. Counts one query per example (a forward+backward pass).
- ``Evolution``: a nevergrad optimizer asks a population, one batched query scores it, the
  losses are told back; θ is the optimizer's recommendation.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .errors import Refusal
from .estimators import Estimator
from .outputs import FLOOR


class Search:
    kind: str = ""
    population: int = 1          # programs evaluated per example in one step
    #: what a step does with non-finite losses: skip the update, or tell them as the worst
    non_finite: str = "skipped"

    def step(self, trainer, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns (losses of the evaluated programs (P,), log-probs around θ (B, C))."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}


def _apply_gradient(theta: torch.Tensor, gradient: torch.Tensor, step_rule, schedule) -> None:
    step_rule.zero_grad()
    theta.grad = gradient
    step_rule.step()
    schedule.step()


class ZerothOrder(Search):
    kind = "blackbox"

    def __init__(self, estimator: Estimator, step_rule, schedule, generator: torch.Generator):
        self.estimator, self.step_rule, self.schedule = estimator, step_rule, schedule
        self.generator = generator
        self.population = estimator.population

    def step(self, trainer, xb, yb):
        thetas = self.estimator.propose(trainer.theta.detach(), self.generator)  # (P, d)
        log_probs = trainer.log_probs(thetas, xb, "train")                      # (P, B, C)
        losses = trainer.loss(trainer.label_map(log_probs), yb)                 # (P,)
        if torch.isfinite(losses).all():          # never feed NaN/inf to a step rule
            _apply_gradient(trainer.theta, self.estimator.estimate(losses), self.step_rule, self.schedule)
        return losses, log_probs.exp().mean(dim=0).log()

    def state_dict(self):
        return {"estimator": self.estimator.state_dict(), "step_rule": self.step_rule.state_dict(),
                "schedule": self.schedule.state_dict(), "generator": self.generator.get_state()}


class Autograd(Search):
    """White-box: ``forward`` maps a (B, *source_shape) tensor to (B, C) logits with autograd.
    The batch goes through in chunks of ``chunk_size`` examples whose gradients add up to the
    batch's (every loss is a mean over examples): on a CPU, a batch of 32 EfficientNet-Lite0 images
    trains at 22 examples/s in chunks of 6 against 14/s at once (benchmarks/results/overhead.md),
    and in a third of the memory."""

    kind = "whitebox"

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], step_rule, schedule,
                 scores: str = "logits", chunk_size: int = 256):
        self.forward, self.step_rule, self.schedule = forward, step_rule, schedule
        self.scores = scores                      # what forward returns: logits or probs
        self.chunk_size = int(chunk_size)

    def step(self, trainer, xb, yb):
        trainer.ledger.spend(len(xb), "train")    # refused before the pass if over budget
        started = time.perf_counter()
        theta = trainer.theta
        self.step_rule.zero_grad()
        loss, parts = torch.zeros(()), []
        for i in range(0, len(xb), self.chunk_size):
            x, y = xb[i:i + self.chunk_size], yb[i:i + self.chunk_size]
            inputs = trainer.transform(theta[None], x)[0]                       # (b, *source_shape)
            scores = self.forward(inputs)                                       # (b, C)
            log_probs = (torch.log_softmax(scores, dim=-1) if self.scores == "logits"
                         else scores.clamp_min(FLOOR).log())
            chunk_loss = trainer.loss(trainer.label_map(log_probs), y) * (len(x) / len(xb))   # ()
            chunk_loss.backward()                 # θ.grad accumulates over the chunks
            loss, parts = loss + chunk_loss.detach(), parts + [log_probs.detach()]
        if torch.isfinite(theta.grad).all():
            self.step_rule.step()
            self.schedule.step()
        trainer.ledger.tallies["train"].seconds += time.perf_counter() - started
        return loss[None], torch.cat(parts)                                     # (1,), (B, C)

    def state_dict(self):
        return {"step_rule": self.step_rule.state_dict(), "schedule": self.schedule.state_dict()}


class Evolution(Search):
    """nevergrad ask/tell. Guards its traps: ``ask()`` never stops at a budget (the ledger
    does); a single −inf or NaN would become the recommendation forever, so non-finite losses
    are replaced by the worst finite loss of the population plus one before ``tell``; the
    whole population is asked, scored in one call and told before the next ask (DiagonalCMA
    asked one at a time never moved its mean in our tests); everything runs in the calling
    thread (NGOpt's meta-model hung at exit in a worker thread with numpy 2.4)."""

    kind = "evolution"
    non_finite = "told as the worst finite loss + 1"

    def __init__(self, optimizer: str, dim: int, *, popsize: int, sigma: float, seed: int, generations: int):
        import nevergrad as ng

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

    def step(self, trainer, xb, yb):
        candidates = [self.optimizer.ask() for _ in range(self.population)]
        thetas = torch.as_tensor(np.stack([c.value for c in candidates]), dtype=torch.float32)  # (P, d)
        log_probs = trainer.log_probs(thetas, xb, "train")                      # (P, B, C)
        losses = trainer.loss(trainer.label_map(log_probs), yb)                 # (P,)
        told = losses.double().numpy().copy()
        finite = np.isfinite(told)
        told[~finite] = (told[finite].max() + 1.0) if finite.any() else 1e6
        for candidate, value in zip(candidates, told):
            self.optimizer.tell(candidate, float(value))
        with torch.no_grad():
            trainer.theta.copy_(torch.as_tensor(self.optimizer.recommend().value, dtype=torch.float32))
        return losses, log_probs.exp().mean(dim=0).log()
