"""Label maps: source-model log-probabilities (…, B, C) → target-class logits (…, B, K).

- ``random``: m random source labels per target class (BAR on real APIs, Voice2Series).
- ``frequency`` (FLM): m source labels per class chosen greedily from the count matrix
  C[s, t] = #{argmax f(x_i) = s, y_i = t} (ILM-VP, Chen et al. 2023). Needs top-1 only.
- ``iterative`` (ILM): the frequency map refitted every epoch with the current program.
- ``linear``: softmax regression on the standardised answers, its L2 penalty given or cross-validated.
- ``blm`` (BLM, Cai et al., NeurIPS 2024): a real-valued reweighting matrix ω (C, K) from the
  same counts, ω[s, t] = C[s, t] / (Σ_t' C[s, t'] + λ), columns normalised; scores log(p · ω).
  Needs top-1 only. Refitted every epoch, as the authors do.
- ``blm+`` (BLM+): as BLM, with C[s, t] the summed top-k source probabilities of the examples
  of class t. Needs scores (probs, logits or top-k with k at least the map's k).
- ``knn``: the k nearest training examples by their answers vote.

A many-to-one map scores target class j by the mean probability of its source labels,
h_j = mean_{s∈S_j} p_s (BAR's multi-label mapping), returned as log h_j.
Fitting takes log-probabilities the trainer already bought under the ``label-map`` purpose.
"""
from __future__ import annotations

from typing import Annotated

import torch

from ..components import AtLeast, Family
from ..errors import Refusal

#: scores are log(max(p · ω, SCORE_FLOOR)) so an all-zero mixture does not become −inf
SCORE_FLOOR = 1e-12
SHOWN_PER_CLASS = 10            # source classes listed per target class by ``explain``


def mix(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log(p · W): source log-probabilities (..., B, C) and weights (C, K) → (..., B, K)."""
    return (log_probs.exp() @ weights).clamp_min(SCORE_FLOOR).log()


#: label map kind → class; built from (num_source, num_target)
LABEL_MAPS = Family("label_map", context=("seed",))


class LabelMap:
    kind: str = ""
    refit_each_epoch: bool = False
    refit_every: int = 0                  # steps between refits when refitted; 0 = once an epoch
    needs_scores: bool = False            # True: a label-only answer cannot fit it

    def __init__(self, num_source: int, num_target: int):
        if num_target > num_source:
            raise Refusal(f"expected at most {num_source} target classes for a model with "
                          f"{num_source} classes, got {num_target}")
        self.num_source, self.num_target = num_source, num_target

    @property
    def needs_fit(self) -> bool:
        return True

    def fit(self, log_probs: torch.Tensor, y: torch.Tensor) -> "LabelMap":
        return self

    def __call__(self, log_probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def explain(self, classes: list[str]) -> list[str]:
        """Markdown lines saying how each target class is scored (the run report's section)."""
        return [f"{self.kind}: no state to show."]


class ManyToOneMap(LabelMap):
    """Each target class j owns a set S_j of m source labels; score_j = log mean_{s∈S_j} p_s."""

    def __init__(self, num_source: int, num_target: int, *, per_class: Annotated[int, AtLeast(1)] = 1):
        super().__init__(num_source, num_target)
        if per_class * num_target > num_source:
            raise Refusal(f"expected label_map.per_class × target classes ≤ the model's {num_source} classes, got "
                          f"{per_class} × {num_target}; set label_map.per_class to at most {num_source // num_target}")
        self.per_class = int(per_class)
        self.assignment = torch.full((num_source,), -1, dtype=torch.long)  # (C,) target or −1

    def __call__(self, log_probs):
        weights = torch.zeros(self.num_source, self.num_target)     # (C, K) columns sum to 1
        used = self.assignment >= 0
        weights[used, self.assignment[used]] = 1.0
        weights /= weights.sum(dim=0, keepdim=True).clamp_min(1)
        return mix(log_probs, weights)

    def sources_of(self, target: int) -> list[int]:
        return torch.nonzero(self.assignment == target).flatten().tolist()

    def state_dict(self):
        return {"assignment": self.assignment.clone()}

    def load_state_dict(self, state):
        self.assignment = state["assignment"].clone()

    def explain(self, classes):
        lines = [f"{self.kind}: each target class scores the mean probability of its source classes "
                 f"({int((self.assignment >= 0).sum()):,} of the model's {self.num_source:,} classes are used).", "",
                 "| target class | source classes | count |", "|---|---|---:|"]
        for index, name in enumerate(classes):
            sources = self.sources_of(index)
            shown = ", ".join(map(str, sources[:SHOWN_PER_CLASS]))
            more = f", … ({len(sources) - SHOWN_PER_CLASS} more)" if len(sources) > SHOWN_PER_CLASS else ""
            lines.append(f"| {name} | {shown}{more} | {len(sources)} |")
        return lines


@LABEL_MAPS.register
class RandomMap(ManyToOneMap):
    """m random source labels per target class (BAR on real APIs, Voice2Series)."""

    kind = "random"

    def __init__(self, num_source, num_target, *, seed: int = 0, **rest):
        super().__init__(num_source, num_target, **rest)
        per_class = self.per_class
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(num_source, generator=generator)[: per_class * num_target]
        self.assignment[chosen] = torch.arange(num_target).repeat_interleave(per_class)

    @property
    def needs_fit(self):
        return False


@LABEL_MAPS.register
class FrequencyMap(ManyToOneMap):
    """m source labels per class chosen greedily from the top-1 counts (FLM)."""

    kind = "frequency"

    def fit(self, log_probs, y):
        """Greedy: take the largest count, give that source label to that class, retire the
        source label (and the class once it has ``per_class`` labels); repeat."""
        counts = torch.zeros(self.num_source, self.num_target, dtype=torch.float64)  # (C, K)
        counts.index_put_((log_probs.argmax(dim=1), y), torch.ones(len(y), dtype=torch.float64),
                          accumulate=True)
        # Few examples leave most counts at 0: break ties by summed probability, which
        # ranks source labels the same way counts would with more data.
        onehot = torch.nn.functional.one_hot(y, self.num_target).double()   # (N, K)
        summed = log_probs.exp().double().T @ onehot                          # (C, K)
        score = counts + 1e-3 * summed / summed.max().clamp_min(1e-12)
        self.assignment = torch.full((self.num_source,), -1, dtype=torch.long)
        taken = torch.zeros(self.num_target, dtype=torch.long)
        for _ in range(self.per_class * self.num_target):
            flat = int(score.argmax())
            source, target = divmod(flat, self.num_target)
            self.assignment[source] = target
            score[source, :] = -1
            taken[target] += 1
            if taken[target] == self.per_class:
                score[:, target] = -1
        return self


@LABEL_MAPS.register
class IterativeMap(FrequencyMap):
    """The frequency map refitted as training goes, with the current program (ILM)."""

    kind = "iterative"
    refit_each_epoch = True

    def __init__(self, num_source, num_target, *, refit_every: Annotated[int, AtLeast(0)] = 0, **rest):
        super().__init__(num_source, num_target, **rest)
        self.refit_every = int(refit_every)


def standardisation(log_probs: torch.Tensor, least: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) → (mean, scale) per source class; one varying less than ``least`` (in no top-k or label
    answer) gets scale ∞: its feature is 0 wherever it appears later, not its rounding noise × 1e6."""
    std = log_probs.std(dim=0) if len(log_probs) > 1 else torch.zeros(log_probs.shape[1])
    return log_probs.mean(dim=0), torch.where(std > least, std, torch.full_like(std, float("inf")))


@LABEL_MAPS.register
class LinearHead(LabelMap):
    """Softmax regression on standardised source log-probabilities, L-BFGS, an L2 penalty: exact
    gradients, no query (it reads answers already bought). ``cv_folds`` ≥ 2: the penalty is chosen at
    each fit from ``grid`` by stratified k-fold cross-validation on the examples fitted (``held_out``)."""

    kind = "linear"
    grid = (10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4)        # cv_folds' penalties; a tie goes to the larger

    def __init__(self, num_source, num_target, *, l2: Annotated[float, AtLeast(0)] = 1e-3, refit: bool = False,
                 refit_every: Annotated[int, AtLeast(0)] = 0, cv_folds: Annotated[int, AtLeast(0)] = 0):
        super().__init__(num_source, num_target)
        if cv_folds == 1:
            raise Refusal("expected label_map.cv_folds 0 (the penalty l2 as given) or at least 2, got 1")
        self.l2 = self.penalty = float(l2)
        self.refit_each_epoch, self.refit_every, self.cv_folds = bool(refit), int(refit_every), int(cv_folds)
        self.mean, self.std = torch.zeros(num_source), torch.ones(num_source)
        self.weight, self.bias = torch.zeros(num_source, num_target), torch.zeros(num_target)

    def fit(self, log_probs, y):
        if self.cv_folds:
            self.penalty = min(self.grid, key=lambda l2: self.held_out(log_probs, y, l2))
        self.mean, self.std, self.weight, self.bias = self.regression(log_probs, y, self.penalty)
        return self

    def regression(self, log_probs, y, l2: float) -> tuple[torch.Tensor, ...]:
        """(mean, scale, weight (C, K), bias (K,)): cross-entropy + l2·‖weight‖², by L-BFGS."""
        mean, scale = standardisation(log_probs)
        features = (log_probs - mean) / scale                                 # (N, C)
        weight = torch.zeros(log_probs.shape[1], self.num_target, requires_grad=True)
        bias = torch.zeros(self.num_target, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200, line_search_fn="strong_wolfe")
        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(features @ weight + bias, y) + l2 * weight.pow(2).sum()
            loss.backward()
            return loss
        optimizer.step(closure)
        return mean, scale, weight.detach(), bias.detach()

    def held_out(self, log_probs, y, l2: float) -> tuple[int, float]:
        """Held-out (errors, cross-entropy), stratified folds; errors first: the loss alone favours calibration."""
        fold = torch.argsort(torch.argsort(y, stable=True)) % min(self.cv_folds, len(y))   # rank by class
        errors, total = 0, 0.0
        for out in (fold == k for k in fold.unique().tolist()):
            mean, scale, weight, bias = self.regression(log_probs[~out], y[~out], l2)
            scores = ((log_probs[out] - mean) / scale) @ weight + bias
            errors += int((scores.argmax(dim=1) != y[out]).sum())
            total += float(torch.nn.functional.cross_entropy(scores, y[out], reduction="sum"))
        return errors, total

    def __call__(self, log_probs):
        return ((log_probs - self.mean) / self.std) @ self.weight + self.bias  # (..., B, K)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias,
                "penalty": torch.tensor(self.penalty, dtype=torch.float64)}

    def load_state_dict(self, state):
        self.mean, self.std, self.penalty = state["mean"], state["std"], float(state.get("penalty", self.l2))
        self.weight, self.bias = state["weight"], state["bias"]

    def explain(self, classes):
        source, target = self.weight.shape                                 # (C, K)
        return [f"linear head: softmax regression on standardised source log-probabilities, weights {source:,} × "
                f"{target:,} and {target:,} biases ({source * target + target:,} parameters), L2 penalty "
                f"{self.penalty:g}" + (f" (by {self.cv_folds}-fold cross-validation)." if self.cv_folds else ".")]


class BayesianMap(LabelMap):
    """Bayesian-guided label mapping (BLM; Cai et al., NeurIPS 2024).

    From a (C, K) matrix of co-occurrences C[s, t] between source class s and target class t,
    ω[s, t] = C[s, t] / (Σ_t' C[s, t'] + λ) estimates P(y_T = t | y_S = s) with Laplace
    smoothing λ (a source class seen rarely gets small weights), and each column is then
    normalised to sum 1. Target class t scores log(Σ_s p_s ω[s, t]) = log(p · ω).

    Differences from the authors' code (tmlr-group/BayesianLM), both for a black-box setting:
    - they multiply the raw logits by ω; we multiply probabilities, the one thing every output
      kind can give (logits, probs, top-k, label), and return the log so losses see logits;
    - a column with no mass (a target class with no example in the fitting data: every example
      of class t adds to column t) would divide by 0 there. We make it uniform, 1/C: with no
      evidence, every source class speaks equally for t, whose score is then log(1/C) for any
      input. A summed-probability tie-break (as ``FrequencyMap`` uses) would not help: that
      sum is also 0 when the class has no examples.
    """

    refit_each_epoch = True                                  # the authors refit every epoch

    def __init__(self, num_source: int, num_target: int, *, blm_lambda: Annotated[float, AtLeast(0)] = 1.0,
                 refit_every: Annotated[int, AtLeast(0)] = 0):
        super().__init__(num_source, num_target)
        if not blm_lambda >= 0:
            raise Refusal(f"expected a Laplace smoothing λ ≥ 0, got {blm_lambda}")
        self.lam, self.refit_every = float(blm_lambda), int(refit_every)
        # before any fit: every source class weighs the same for every target class
        self.omega = torch.full((num_source, num_target), 1.0 / num_source)  # (C, K)

    def _counts(self, log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, C) log-probabilities, (N,) labels → (C, K) float64 co-occurrence matrix."""
        raise NotImplementedError

    def fit(self, log_probs, y):
        y = y.long()
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_target):
            raise Refusal(f"expected target labels in [0, {self.num_target}), got labels in "
                             f"[{int(y.min())}, {int(y.max())}]")
        counts = self._counts(log_probs, y)                                  # (C, K)
        # with λ = 0 a source class never seen would be 0 / 0: its row stays 0 instead
        smoothed = (counts.sum(dim=1, keepdim=True) + self.lam).clamp_min(torch.finfo(torch.float64).tiny)
        omega = counts / smoothed                                            # (C, K)
        column = omega.sum(dim=0, keepdim=True)                              # (1, K)
        empty = column[0] <= 0
        omega[:, empty] = 1.0 / self.num_source                              # no evidence: uniform
        column[:, empty] = 1.0
        self.omega = (omega / column).float()                                # columns sum to 1
        return self

    def __call__(self, log_probs):
        return mix(log_probs, self.omega)

    def state_dict(self):
        return {"omega": self.omega.clone()}

    def load_state_dict(self, state):
        self.omega = state["omega"].clone()

    def explain(self, classes):
        shown = min(SHOWN_PER_CLASS, self.num_source)
        lines = [f"{self.kind}: each target class scores log(p · ω) with a weight ω for every source class; "
                 f"the {shown} heaviest per target class (weights that round to 0 left out):", "",
                 "| target class | source class (weight ω) |", "|---|---|"]
        for index, name in enumerate(classes):
            weights, sources = self.omega[:, index].topk(shown)
            heaviest = [f"{s} ({w:.3f})" for s, w in zip(sources.tolist(), weights.tolist()) if w >= 5e-4]
            lines.append(f"| {name} | {', '.join(heaviest)} |")
        return lines


@LABEL_MAPS.register
class BLM(BayesianMap):
    """C[s, t] = #{i : argmax f(x_i) = s, y_i = t}: top-1 counts, so label-only APIs work."""

    kind = "blm"

    def _counts(self, log_probs, y):
        counts = torch.zeros(self.num_source, self.num_target, dtype=torch.float64)   # (C, K)
        counts.index_put_((log_probs.argmax(dim=1), y), torch.ones(len(y), dtype=torch.float64),
                          accumulate=True)
        return counts


def default_blm_topk(num_target: int) -> int:
    """BLM+'s k: 15 % of the target classes, truncated as in the authors' code
    (``int(len(class_names) * 0.15)``), and at least 1 so small tasks still count something."""
    return max(1, int(0.15 * num_target))


@LABEL_MAPS.register
class BLMPlus(BayesianMap):
    """C[s, t] = Σ_{i: y_i = t} p_s(x_i) over the top-k source classes of example i (0 elsewhere):
    the runner-up classes vote too, weighted by the model's confidence."""

    kind = "blm+"
    needs_scores = True

    def __init__(self, num_source: int, num_target: int, *, blm_topk: Annotated[int, AtLeast(0)] = 0, **rest):
        super().__init__(num_source, num_target, **rest)
        self.topk = int(blm_topk) or default_blm_topk(num_target)
        if not 1 <= self.topk <= num_source:
            raise Refusal(f"expected a BLM+ top-k in [1, {num_source}], got {self.topk}")

    def _counts(self, log_probs, y):
        probs = log_probs.exp().double()                                     # (N, C)
        top_values, top_indices = probs.topk(self.topk, dim=1)               # (N, k)
        kept = torch.zeros_like(probs).scatter_(1, top_indices, top_values)  # (N, C) top-k only
        onehot = torch.nn.functional.one_hot(y, self.num_target).double()    # (N, K)
        return kept.T @ onehot                                               # (C, K)


@LABEL_MAPS.register
class NearestNeighbours(LabelMap):
    """k nearest training examples by their answers; a class scores its share of the votes.

    The answers (log-probabilities) are standardised per source class as the linear head does,
    and compared by Euclidean distance. Target class t scores log((v_t + α)/(k + Kα)), v_t the
    neighbours of class t among the ``neighbours`` nearest, α = ½, so a class with no vote
    keeps a finite score for the losses. Nothing is trained: ``fit`` keeps the answers it is
    given (N × C values in program.pt). The training examples are their own nearest neighbours,
    so on them the scores are optimistic; it is the "nearest neighbours on the answers"
    baseline of the few-label benchmarks, with the zero program or a frozen one."""

    kind = "knn"
    smoothing = 0.5                                                   # α

    def __init__(self, num_source, num_target, *, neighbours: Annotated[int, AtLeast(1)] = 5):
        super().__init__(num_source, num_target)
        self.neighbours = int(neighbours)
        self.mean, self.std = torch.zeros(num_source), torch.ones(num_source)
        self.features = torch.zeros(0, num_source)                    # (N, C) standardised answers
        self.labels = torch.zeros(0, dtype=torch.long)                # (N,)

    def fit(self, log_probs, y):
        self.mean, self.std = standardisation(log_probs)
        self.features, self.labels = (log_probs - self.mean) / self.std, y.long().clone()
        return self

    def __call__(self, log_probs):
        if len(self.labels) == 0:
            raise Refusal("expected the knn label map to be fitted on answers before scoring, got none")
        leading = log_probs.shape[:-1]
        z = ((log_probs - self.mean) / self.std).reshape(-1, self.num_source)               # (M, C)
        # squared distances by matmul rather than cdist: the exported head needs plain ops
        distances = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.features.T
                     + self.features.pow(2).sum(1)[None])                                     # (M, N)
        k = min(self.neighbours, len(self.labels))
        nearest = distances.topk(k, dim=1, largest=False).indices                             # (M, k)
        classes = torch.arange(self.num_target)                                                # (K,)
        votes = (self.labels[nearest][..., None] == classes).sum(dim=1).float()               # (M, K)
        shares = (votes + self.smoothing) / (k + self.num_target * self.smoothing)
        return shares.log().reshape(*leading, self.num_target)                               # (..., B, K)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std, "features": self.features, "labels": self.labels}

    def load_state_dict(self, state):
        self.mean, self.std = state["mean"], state["std"]
        self.features, self.labels = state["features"], state["labels"]

    def explain(self, classes):
        counts = torch.bincount(self.labels, minlength=self.num_target).tolist()
        return [f"knn: each target class scores its share of the {self.neighbours} nearest of "
                f"{len(self.labels):,} training examples, compared by their standardised answers over the "
                f"model's {self.num_source:,} classes.", "",
                "| target class | training examples kept |", "|---|---:|",
                *(f"| {name} | {count:,} |" for name, count in zip(classes, counts))]


def target_accuracy(target_logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((target_logits.argmax(dim=-1) == y).float().mean())
