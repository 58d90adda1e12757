"""The one training loop: batch → perturb → transform → query → map → loss → step.

Every query goes through the ledger. Model selection uses the validation split only; the test
split is touched only after training: once for the chosen program, once for the zero program.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..backends.base import Backend
from ..data import Dataset
from ..errors import Refusal
from ..program.label_maps import LabelMap, target_accuracy
from ..backends.ledger import BudgetExceeded, Ledger
from ..backends.outputs import FLOOR
from ..program.querying import examples_log_probs, programs_log_probs
from ..search.strategies import Search
from ..program.transforms import Transform


class BudgetTooSmall(Refusal):
    """The budget cannot pay for one step; refused before any query."""


@dataclass
class TrainingResult:
    theta: torch.Tensor                 # (d,) the program chosen on validation
    label_map: LabelMap
    history: list[dict]                 # one row per step
    start_accuracy: float               # test accuracy of the zero program, map as first fitted
    test_accuracy: float
    best_validation_accuracy: float
    best_validation_loss: float
    best_step: int
    steps: int
    stopped: str                        # why training ended
    ledger: dict
    wall_seconds: float


class Trainer:
    """Holds the components of one run; ``fit`` trains and returns a TrainingResult."""

    def __init__(self, *, backend: Backend, transform: Transform, label_map: LabelMap, loss,
                 make_search: Callable[[torch.Tensor, Callable[[int], int]], Search], train: Dataset,
                 validation: Dataset,
                 test: Dataset, budget: int, batch_size: int, max_steps: int = 0,
                 eval_every: int = 10, seed: int = 0,
                 on_step: Callable[[dict], None] | None = None,
                 on_checkpoint: Callable[[dict], None] | None = None, checkpoint_every: int = 0):
        self.backend, self.transform, self.label_map = backend, transform, label_map
        self.loss = loss
        self.train_set, self.validation, self.test = train, validation, test
        self.batch_size = min(int(batch_size), len(train))
        self.max_steps, self.eval_every, self.seed = int(max_steps), max(int(eval_every), 1), int(seed)
        self.on_step, self.on_checkpoint = on_step, on_checkpoint
        self.checkpoint_every = int(checkpoint_every)
        self.ledger = Ledger(backend, budget)
        self.theta = torch.zeros(transform.num_params, requires_grad=True)
        self.order_rng = np.random.default_rng(self.seed)          # batch order
        self.probe_cost = backend.capabilities.probe_examples   # a remote API is probed first
        self.map_cost = len(train) if label_map.needs_fit else 0
        self.validation_cost = len(validation)
        # the search moves θ; it learns how many steps the budget pays for a population of its size
        self.search = make_search(self.theta, self.planned_steps)
        self.step_cost = self.search.population * self.batch_size
        # the smallest useful run: fit the map, validate the zero program, one step, validate it
        minimum = self.probe_cost + self.map_cost + self.step_cost + 2 * self.validation_cost
        if budget < minimum:
            probe = f"probe {self.probe_cost}, " if self.probe_cost else ""
            programs = f"{self.search.population} program{'s' if self.search.population != 1 else ''}"
            raise BudgetTooSmall(
                f"expected a budget of at least {minimum} queries ({probe}label map {self.map_cost}, one step "
                f"{self.step_cost} = {programs} × batch {self.batch_size}, two "
                f"validation passes of {self.validation_cost}), got {budget}")

    def planned_steps(self, population: int) -> int:
        """How many steps the budget pays for (the horizon of schedules and of nevergrad):
        the map fit and the first and last validation once, then each step with its share of
        the periodic validation passes."""
        steps = self._affordable_steps(population)
        return min(steps, self.max_steps) if self.max_steps else steps

    def bound_by_steps(self) -> bool:
        """Whether ``max_steps`` ends the run before the budget would (progress then counts steps)."""
        return bool(self.max_steps) and self._affordable_steps(self.search.population) > self.max_steps

    def _affordable_steps(self, population: int) -> int:
        per_step = population * self.batch_size + self.validation_cost / self.eval_every
        available = self.ledger.budget - self.probe_cost - self.map_cost - 2 * self.validation_cost
        return max(int(available // per_step), 1)

    # ---- queries -------------------------------------------------------------------------
    def log_probs(self, thetas: torch.Tensor, x: torch.Tensor, purpose: str) -> torch.Tensor:
        """thetas (P, d), x (B, ...) → (P, B, C) source log-probabilities, one batched call."""
        return programs_log_probs(self.transform, thetas, x, self.ledger, purpose)

    def _dataset_log_probs(self, theta: torch.Tensor, data: Dataset, purpose: str) -> torch.Tensor:
        """(N, C) source log-probabilities of a whole split under one program."""
        return examples_log_probs(self.transform, theta, data.x, self.ledger, purpose)

    def accuracy(self, theta: torch.Tensor, data: Dataset, purpose: str) -> float:
        logits = self.label_map(self._dataset_log_probs(theta, data, purpose))
        return target_accuracy(logits, torch.as_tensor(data.y))

    def zero_program(self) -> dict:
        """No program at all: the map fitted to the zero program's answers on the train split
        (its only budgeted queries) and the test accuracy — the baseline a program must beat."""
        zero = torch.zeros(self.transform.num_params)
        if self.label_map.needs_fit:
            self.label_map.fit(self._dataset_log_probs(zero, self.train_set, "label-map"),
                               torch.as_tensor(self.train_set.y))
        return {"test_accuracy": self.accuracy(zero, self.test, "test"), "ledger": self.ledger.summary()}

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainingResult:
        started = time.perf_counter()
        torch.manual_seed(self.seed)
        x_train = torch.as_tensor(self.train_set.x)
        y_train = torch.as_tensor(self.train_set.y)

        if self.probe_cost:   # one real input, answer decoded and checked, before the bulk is spent
            self.log_probs(torch.zeros(1, self.transform.num_params), x_train[:self.probe_cost], "probe")
        latest = None          # (N, C): each training example's latest answers, for refits
        if self.label_map.needs_fit:
            zero = torch.zeros(self.transform.num_params)
            latest = self._dataset_log_probs(zero, self.train_set, "label-map")
            self.label_map.fit(latest, y_train)
        start_map = self.label_map.state_dict()             # the map as fitted to the zero program

        best = {"loss": math.inf, "accuracy": None, "theta": self.theta.detach().clone(),
                "map": self.label_map.state_dict(), "step": 0}
        self._validate(0, best)

        refit_every = self.label_map.refit_every or math.ceil(len(self.train_set) / self.batch_size)
        self.stream: list[int] = []
        history: list[dict] = []
        step = 0
        try:
            while self._can_step(step):
                if len(self.stream) < self.batch_size:
                    self.stream.extend(self.order_rng.permutation(len(self.train_set)).tolist())
                index, self.stream = self.stream[: self.batch_size], self.stream[self.batch_size:]
                xb, yb = x_train[index], y_train[index]                  # (B, ...), (B,)

                losses, around = self.step(xb, yb)                      # (P,), (B, C)
                step += 1
                row = {"step": step, "queries": self.ledger.spent, "loss": float(losses.mean())}
                if not torch.isfinite(losses).all():
                    row["non_finite"] = self.search.non_finite
                if self.label_map.refit_each_epoch and latest is not None:
                    # answers around θ, already paid for, replace each example's older ones
                    # (the zero program's at first): refitting the map costs no query
                    latest[index] = around
                    if step % refit_every == 0:
                        self.label_map.fit(latest, y_train)
                if step % self.eval_every == 0 or not self._can_step(step):
                    validated = self._validate(step, best)
                    if validated:
                        row["val_loss"], row["val_accuracy"] = validated
                    row["queries"] = self.ledger.spent
                history.append(row)
                if self.on_step:
                    self.on_step(row)
                if self.on_checkpoint and self.checkpoint_every and step % self.checkpoint_every == 0:
                    self.on_checkpoint(self.checkpoint(step))
            stopped = "max_steps" if self.max_steps and step >= self.max_steps else "budget"
        except BudgetExceeded:
            # retries of a remote backend took what the next step needed; the last finished
            # step is still validated when what is left pays for it, so its program can be chosen
            stopped = "budget, retries included"
            if history and "val_loss" not in history[-1]:
                self._validate_after_retries(history, best)
        except BaseException:
            if self.on_checkpoint:        # keep what was paid for: the run can be resumed
                self.on_checkpoint(self.checkpoint(step))
            raise

        # The test split is touched only now: the zero program with the map as first fitted
        # (the baseline the program must beat; a map refitted to a trained program would
        # understate it), then the chosen program with its map.
        self.label_map.load_state_dict(start_map)
        start_accuracy = self.accuracy(torch.zeros_like(best["theta"]), self.test, "test")
        self.label_map.load_state_dict(best["map"])
        test_accuracy = self.accuracy(best["theta"], self.test, "test")
        return TrainingResult(
            theta=best["theta"], label_map=self.label_map, history=history,
            start_accuracy=start_accuracy, test_accuracy=test_accuracy,
            best_validation_accuracy=best["accuracy"], best_validation_loss=best["loss"],
            best_step=best["step"], steps=step, stopped=stopped,
            ledger=self.ledger.summary(), wall_seconds=time.perf_counter() - started)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the search on a batch: (losses of the programs scored (P,), each example's
        log-probabilities around θ (B, C), for refitting the map without another query)."""
        if self.search.exact:
            return self._descend(xb, yb)
        asked = self.search.ask()
        log_probs = self.log_probs(asked.thetas, xb, "train")                   # (P, B, C)
        losses = self.loss(self.label_map(log_probs), yb)                       # (P,)
        self.search.tell(asked, losses)
        return losses, log_probs.exp().mean(dim=0).log()

    def _descend(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A white-box step: one query per example, booked (and refused if over budget) first."""
        self.ledger.spend(len(xb), "train")
        started = time.perf_counter()
        stepped = self.search.descend(self._objective, xb, yb)
        self.ledger.add_seconds("train", time.perf_counter() - started)
        return stepped

    def _objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (b, ...), y (b,)) → (loss (), log-probs (b, C)), differentiable in θ through the
        transform, the model's own forward pass and the map."""
        inputs = self.transform(self.theta[None], x)[0]                          # (b, *source_shape)
        scores = self.backend.forward_tensor(inputs)                             # (b, C)
        log_probs = (torch.log_softmax(scores, dim=-1) if self.backend.output_kind == "logits"
                     else scores.clamp_min(FLOOR).log())
        return self.loss(self.label_map(log_probs), y), log_probs

    def _validate_after_retries(self, history: list[dict], best: dict) -> None:
        """Validate the last finished step (θ is its program: a step moves θ only after its
        answers arrived) and report it as a row of its own. When the retries that ended the
        run were a validation's own, what is left cannot pay for another: nothing is sent."""
        last = history[-1]
        try:
            validated = self._validate(last["step"], best)
        except BudgetExceeded:              # its own retries did not fit either
            return
        if validated:
            row = {**last, "queries": self.ledger.spent, "val_loss": validated[0],
                   "val_accuracy": validated[1], "validated_after": "retries"}
            history.append(row)
            if self.on_step:
                self.on_step(row)

    def _can_step(self, step: int) -> bool:
        """Another step, and the validation that follows the last one, must both be affordable."""
        if self.max_steps and step >= self.max_steps:
            return False
        return self.ledger.can_afford(self.step_cost + self.validation_cost)

    def _validate(self, step: int, best: dict) -> tuple[float, float] | None:
        """Validation loss and accuracy of the current program; keeps the best by loss.

        Selection uses the loss, not the accuracy: on a validation split of a few dozen
        examples accuracy moves in coarse jumps and ties, the loss ranks programs smoothly."""
        if not self.ledger.can_afford(self.validation_cost, "validate"):
            return None
        logits = self.label_map(self._dataset_log_probs(self.theta, self.validation, "validate"))
        y = torch.as_tensor(self.validation.y)
        loss, accuracy = float(self.loss(logits, y)), target_accuracy(logits, y)
        if loss < best["loss"]:
            best.update(loss=loss, accuracy=accuracy, theta=self.theta.detach().clone(),
                        map=self.label_map.state_dict(), step=step)
        return loss, accuracy

    def checkpoint(self, step: int) -> dict:
        """What a resumed run checks its replay against: the step and θ after it. A resume
        replays the run from its seed and journal, so nothing else needs saving."""
        return {"step": step, "theta": self.theta.detach().clone()}
