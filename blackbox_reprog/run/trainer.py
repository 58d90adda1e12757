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
from ..program.querying import CHUNK, examples_log_probs, programs_log_probs
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
    stopped: str                        # why training ended: budget, max_steps, early, budget, retries included
    ledger: dict
    wall_seconds: float
    start_validation: dict              # the zero program on validation: {"loss", "accuracy"} (step 0)
    test_confusion: list[list[int]]     # (K, K) counts of the chosen program's test answers: row true, column predicted
    validation_scores: torch.Tensor | None = None   # (N_val, K) the chosen program's validation scores (calibration)


class Trainer:
    """Holds the components of one run; ``fit`` trains and returns a TrainingResult."""

    def __init__(self, *, backend: Backend, transform: Transform, label_map: LabelMap, loss,
                 make_search: Callable[[torch.Tensor, Callable[[int], int]], Search], train: Dataset,
                 validation: Dataset,
                 test: Dataset, budget: int, batch_size: int, max_steps: int = 0,
                 eval_every: int = 10, seed: int = 0, patience: int = 0,
                 on_step: Callable[[dict], None] | None = None,
                 on_checkpoint: Callable[[dict], None] | None = None, checkpoint_every: int = 0,
                 on_test: Callable[[int, int], None] | None = None):
        self.backend, self.transform, self.label_map = backend, transform, label_map
        self.loss = loss
        self.train_set, self.validation, self.test = train, validation, test
        self.batch_size = min(int(batch_size), len(train))
        self.max_steps, self.eval_every, self.seed = int(max_steps), max(int(eval_every), 1), int(seed)
        self.patience = int(patience)       # validation passes without a lower loss before stopping; 0: never
        self.on_step, self.on_checkpoint, self.on_test = on_step, on_checkpoint, on_test
        self.checkpoint_every = int(checkpoint_every)
        self.stopped = ""                   # why training ended, once it has
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
        minimum = self.budgeted_cost(1)
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

    # ---- the cost of a run, before it starts ----------------------------------------------------
    def validation_passes(self, steps: int) -> int:
        """The zero program's, one every ``eval_every`` steps, and one after the last step."""
        return 1 + math.ceil(steps / self.eval_every)

    def budgeted_cost(self, steps: int) -> int:
        """Budgeted queries a run of ``steps`` steps spends when nothing is sent again."""
        return (self.probe_cost + self.map_cost + steps * self.step_cost
                + self.validation_passes(steps) * self.validation_cost)

    def affordable_steps(self) -> int:
        """The steps the loop makes when nothing is sent again and nothing stops it early: the
        most whose ``budgeted_cost`` fits the budget (``_can_step`` lets step s+1 go exactly when
        budgeted_cost(s+1) fits), at most ``max_steps``. ``planned_steps``, the horizon of the
        schedules, is a smooth estimate of the same that can fall a step or two short."""
        after_start = self.ledger.budget - self.probe_cost - self.map_cost - self.validation_cost
        cycle = self.eval_every * self.step_cost + self.validation_cost   # eval_every steps and their pass
        full, rest = divmod(after_start, cycle)
        # then a partial cycle: r more steps and the validation after the last of them
        steps = full * self.eval_every + max(0, (rest - self.validation_cost) // self.step_cost)
        return min(steps, self.max_steps) if self.max_steps else steps

    def plan(self) -> dict:
        """What the run will spend, per purpose, before it spends anything (``--dry-run``)."""
        steps = self.affordable_steps()
        passes = self.validation_passes(steps)
        budgeted = self.budgeted_cost(steps)
        return {"probe": self.probe_cost, "label-map": self.map_cost, "train": steps * self.step_cost,
                "validate": passes * self.validation_cost, "test": 2 * len(self.test),
                "budgeted": budgeted, "budget": self.ledger.budget, "unspent": self.ledger.budget - budgeted,
                "steps": steps, "step": self.step_cost, "population": self.search.population,
                "batch_size": self.batch_size, "validation_passes": passes,
                "validation_size": self.validation_cost, "test_size": len(self.test),
                "train_size": len(self.train_set), "eval_every": self.eval_every,
                # why no more steps: max_steps, or the budget (one more step needs a budget this large)
                "bound_by": "max_steps" if self.max_steps and steps == self.max_steps else "budget",
                "one_more_step_budget": self.budgeted_cost(steps + 1), "patience": self.patience}

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
                "map": self.label_map.state_dict(), "step": 0, "scores": None}
        start = self._validate(0, best)
        # step 0, the zero program, is a row too: the curve then shows what every step had to beat.
        # Its training loss is the zero program's on the answers the map was fitted to (none
        # were bought for a map fitted on nothing)
        history: list[dict] = [{"step": 0, "queries": self.ledger.spent,
                                "loss": None if latest is None else float(self.loss(self.label_map(latest), y_train))}]
        if start:
            history[0]["val_loss"], history[0]["val_accuracy"] = start
        if self.on_step:
            self.on_step(history[0])

        refit_every = self.label_map.refit_every or math.ceil(len(self.train_set) / self.batch_size)
        self.stream: list[int] = []
        step = stale = 0                     # stale: validation passes since the selection loss last fell
        self.stopped = ""
        try:
            while not self.stopped and self._can_step(step):
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
                        stale = 0 if best["step"] == step else stale + 1
                        # early stopping: only when it saves something (another step was affordable)
                        if self.patience and stale >= self.patience and self._can_step(step):
                            self.stopped = "early"
                    row["queries"] = self.ledger.spent
                history.append(row)
                if self.on_step:
                    self.on_step(row)
                if self.on_checkpoint and self.checkpoint_every and step % self.checkpoint_every == 0:
                    self.on_checkpoint(self.checkpoint(step))
            if not self.stopped:
                self.stopped = "max_steps" if self.max_steps and step >= self.max_steps else "budget"
        except BudgetExceeded:
            # retries of a remote backend took what the next step needed; the last finished
            # step is still validated when what is left pays for it, so its program can be chosen
            self.stopped = "budget, retries included"
            if history[-1]["step"] and "val_loss" not in history[-1]:
                self._validate_after_retries(history, best)
        except BaseException:
            if self.on_checkpoint:        # keep what was paid for: the run can be resumed
                self.on_checkpoint(self.checkpoint(step))
            raise

        # The test split is touched only now: the zero program with the map as first fitted
        # (the baseline the program must beat; a map refitted to a trained program would
        # understate it), then the chosen program with its map.
        self.label_map.load_state_dict(start_map)
        total = 2 * len(self.test)
        if self.on_test:
            self.on_test(0, total)
        start_accuracy = target_accuracy(self._test_logits(torch.zeros_like(best["theta"]), 0, total),
                                         torch.as_tensor(self.test.y))
        self.label_map.load_state_dict(best["map"])
        logits = self._test_logits(best["theta"], len(self.test), total)                  # (N, K)
        y_test = torch.as_tensor(self.test.y)
        confusion = torch.zeros(logits.shape[-1], logits.shape[-1], dtype=torch.long)    # (K, K)
        confusion.index_put_((y_test, logits.argmax(dim=-1)), torch.ones(len(y_test), dtype=torch.long),
                             accumulate=True)
        return TrainingResult(
            theta=best["theta"], label_map=self.label_map, history=history,
            start_accuracy=start_accuracy, test_accuracy=target_accuracy(logits, y_test),
            best_validation_accuracy=best["accuracy"], best_validation_loss=best["loss"],
            best_step=best["step"], steps=step, stopped=self.stopped,
            ledger=self.ledger.summary(), wall_seconds=time.perf_counter() - started,
            start_validation={"loss": start[0], "accuracy": start[1]} if start else {},
            test_confusion=confusion.tolist(), validation_scores=best["scores"])

    def _test_logits(self, theta: torch.Tensor, done: int, total: int) -> torch.Tensor:
        """(N, K) target logits of the test split under θ (d,), sent in the calls a whole split
        is always sent in (``CHUNK`` examples), each reported to ``on_test`` as it returns:
        ``done`` test queries came before, of ``total``."""
        x = torch.as_tensor(self.test.x)
        parts = []
        for i in range(0, len(x), CHUNK):
            parts.append(examples_log_probs(self.transform, theta, x[i:i + CHUNK], self.ledger, "test"))  # (n, C)
            if self.on_test:
                self.on_test(done + min(i + CHUNK, len(x)), total)
        return self.label_map(torch.cat(parts))

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
                        map=self.label_map.state_dict(), step=step, scores=logits.detach().clone())
        return loss, accuracy

    def checkpoint(self, step: int) -> dict:
        """What a resumed run checks its replay against: the step and θ after it. A resume
        replays the run from its seed and journal, so nothing else needs saving."""
        return {"step": step, "theta": self.theta.detach().clone()}
