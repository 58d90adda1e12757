"""Label maps: source-model log-probabilities (…, B, C) → target-class logits (…, B, K).

- ``random``: m random source labels per target class (BAR on real APIs, Voice2Series).
- ``frequency`` (FLM): m source labels per class chosen greedily from the count matrix
  C[s, t] = #{argmax f(x_i) = s, y_i = t} (ILM-VP, Chen et al. 2023). Needs top-1 only.
- ``iterative`` (ILM): the frequency map refitted every epoch with the current program.
- ``linear``: softmax regression on the standardised source log-probabilities.

A many-to-one map scores target class j by the mean probability of its source labels,
h_j = mean_{s∈S_j} p_s (BAR's multi-label mapping), returned as log h_j.
Fitting takes log-probabilities the trainer already bought under the ``label-map`` purpose.
"""
from __future__ import annotations

import numpy as np
import torch


class LabelMap:
    kind: str = ""
    refit_each_epoch: bool = False

    def __init__(self, num_source: int, num_target: int):
        if num_target > num_source:
            raise ValueError(f"expected at most {num_source} target classes for a model with "
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


class ManyToOneMap(LabelMap):
    """Each target class j owns a set S_j of m source labels; score_j = log mean_{s∈S_j} p_s."""

    def __init__(self, num_source: int, num_target: int, per_class: int = 1):
        super().__init__(num_source, num_target)
        if per_class * num_target > num_source:
            raise ValueError(f"expected per_class × classes ≤ {num_source}, got "
                             f"{per_class} × {num_target}")
        self.per_class = int(per_class)
        self.assignment = torch.full((num_source,), -1, dtype=torch.long)  # (C,) target or −1

    def __call__(self, log_probs):
        weights = torch.zeros(self.num_source, self.num_target)     # (C, K) columns sum to 1
        used = self.assignment >= 0
        weights[used, self.assignment[used]] = 1.0
        weights /= weights.sum(dim=0, keepdim=True).clamp_min(1)
        mixed = log_probs.exp() @ weights                            # (..., B, K)
        return mixed.clamp_min(1e-12).log()

    def sources_of(self, target: int) -> list[int]:
        return torch.nonzero(self.assignment == target).flatten().tolist()

    def state_dict(self):
        return {"assignment": self.assignment.clone()}

    def load_state_dict(self, state):
        self.assignment = state["assignment"].clone()


class RandomMap(ManyToOneMap):
    kind = "random"

    def __init__(self, num_source, num_target, per_class=1, seed: int = 0):
        super().__init__(num_source, num_target, per_class)
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(num_source, generator=generator)[: per_class * num_target]
        self.assignment[chosen] = torch.arange(num_target).repeat_interleave(per_class)

    @property
    def needs_fit(self):
        return False


class FrequencyMap(ManyToOneMap):
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


class IterativeMap(FrequencyMap):
    kind = "iterative"
    refit_each_epoch = True


class LinearHead(LabelMap):
    """Softmax regression on standardised source log-probabilities, fitted by L-BFGS with an
    L2 penalty. Exact gradients, no queries: it only reads outputs already bought."""

    kind = "linear"

    def __init__(self, num_source, num_target, l2: float = 1e-3, refit: bool = False):
        super().__init__(num_source, num_target)
        self.l2 = float(l2)
        self.refit_each_epoch = bool(refit)
        self.mean = torch.zeros(num_source)
        self.std = torch.ones(num_source)
        self.weight = torch.zeros(num_source, num_target)
        self.bias = torch.zeros(num_target)

    def fit(self, log_probs, y):
        self.mean = log_probs.mean(dim=0)
        self.std = log_probs.std(dim=0).clamp_min(1e-6)
        features = (log_probs - self.mean) / self.std               # (N, C)
        weight = torch.zeros(self.num_source, self.num_target, requires_grad=True)
        bias = torch.zeros(self.num_target, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(features @ weight + bias, y)
            loss = loss + self.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def __call__(self, log_probs):
        return ((log_probs - self.mean) / self.std) @ self.weight + self.bias  # (..., B, K)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}

    def load_state_dict(self, state):
        self.mean, self.std = state["mean"], state["std"]
        self.weight, self.bias = state["weight"], state["bias"]


def make_label_map(kind: str, num_source: int, num_target: int, *, per_class: int = 1,
                   seed: int = 0, l2: float = 1e-3, refit: bool = False) -> LabelMap:
    if kind == "random":
        return RandomMap(num_source, num_target, per_class, seed)
    if kind == "frequency":
        return FrequencyMap(num_source, num_target, per_class)
    if kind == "iterative":
        return IterativeMap(num_source, num_target, per_class)
    if kind == "linear":
        return LinearHead(num_source, num_target, l2, refit)
    raise ValueError(f"unknown label map {kind!r}; expected one of: random, frequency, iterative, linear")


def target_accuracy(target_logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((target_logits.argmax(dim=-1) == y).float().mean())
