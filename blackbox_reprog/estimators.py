"""Zeroth-order gradient estimators.

An estimator never sees the backend. Each step it proposes a population of programs
(``propose``: θ → (P, d)); the trainer evaluates all P on the same batch in one batched call
(common random numbers) and hands back their losses; ``estimate`` turns those into ĝ.
Perturbations are drawn from the run's seeded generator, so a run replays exactly from its seed.

Costs per step on a batch of B examples: one-sided B·(q+1), two-sided / SPSA / coordinate 2·B·q.
"""
from __future__ import annotations

import math

import torch

from .errors import Refusal


class Estimator:
    kind: str = ""

    def __init__(self, dim: int, *, directions: int = 10, smoothing: float = 0.005):
        self.dim, self.q, self.mu = int(dim), int(directions), float(smoothing)
        if self.q < 1:
            raise Refusal(f"expected at least 1 direction, got {self.q}")
        if not self.mu > 0:
            raise Refusal(f"expected a smoothing radius above 0, got {self.mu}")
        self._theta = self._directions = None
        self.step_count = 0

    @property
    def population(self) -> int:
        """How many programs one step evaluates."""
        raise NotImplementedError

    def propose(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """θ (d,) → (P, d) programs to evaluate."""
        raise NotImplementedError

    def estimate(self, losses: torch.Tensor) -> torch.Tensor:
        """(P,) losses of the proposed programs → ĝ (d,)."""
        raise NotImplementedError

    def _draw(self, generator, distribution: str) -> torch.Tensor:
        """(q, d) directions: Gaussian, or uniform on the unit sphere."""
        u = torch.randn(self.q, self.dim, generator=generator)
        if distribution == "sphere":
            u = u / u.norm(dim=1, keepdim=True)
        return u

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]


class RandomDirection(Estimator):
    """One-sided: ĝ = (φ/q) Σ_j [f(θ + μu_j) − f(θ)]/μ · u_j, sharing the base evaluation f(θ).
    φ = d for unit-sphere directions (BAR: b = d), 1 for Gaussian ones — both unbiased for the
    gradient of the smoothed loss."""

    kind = "random"

    def __init__(self, dim, *, directions=10, smoothing=0.005, distribution="gaussian"):
        super().__init__(dim, directions=directions, smoothing=smoothing)
        if distribution not in ("gaussian", "sphere"):
            raise Refusal(f"expected distribution gaussian or sphere, got {distribution!r}")
        self.distribution = distribution
        self.phi = float(self.dim) if distribution == "sphere" else 1.0

    @property
    def population(self):
        return self.q + 1

    def propose(self, theta, generator):
        self._directions = self._draw(generator, self.distribution)  # (q, d)
        return torch.cat([theta[None], theta + self.mu * self._directions])  # (q+1, d)

    def estimate(self, losses):
        self.step_count += 1
        slopes = (losses[1:] - losses[0]) / self.mu                   # (q,)
        return self.phi / self.q * (slopes @ self._directions)


class Antithetic(RandomDirection):
    """Two-sided: ĝ = (φ/q) Σ_j [f(θ + μu_j) − f(θ − μu_j)]/(2μ) · u_j. Lower bias and
    variance than one-sided at 2q evaluations; with q = 1 it is ZO-Bench's usual baseline."""

    kind = "antithetic"

    @property
    def population(self):
        return 2 * self.q

    def propose(self, theta, generator):
        self._directions = self._draw(generator, self.distribution)
        return torch.cat([theta + self.mu * self._directions, theta - self.mu * self._directions])

    def estimate(self, losses):
        self.step_count += 1
        slopes = (losses[: self.q] - losses[self.q:]) / (2 * self.mu)
        return self.phi / self.q * (slopes @ self._directions)


class Coordinate(Estimator):
    """Central differences on q random coordinates, scaled by d/q so the estimate is unbiased
    over the choice of coordinates; q = d gives the full finite-difference gradient (DeepZero)."""

    kind = "coordinate"

    def __init__(self, dim, *, directions=10, smoothing=0.005):
        super().__init__(dim, directions=min(directions, dim), smoothing=smoothing)

    @property
    def population(self):
        return 2 * self.q

    def propose(self, theta, generator):
        self._coords = torch.randperm(self.dim, generator=generator)[: self.q]
        steps = torch.zeros(self.q, self.dim)
        steps[torch.arange(self.q), self._coords] = self.mu
        return torch.cat([theta + steps, theta - steps])

    def estimate(self, losses):
        self.step_count += 1
        g = torch.zeros(self.dim)
        g[self._coords] = (losses[: self.q] - losses[self.q:]) / (2 * self.mu)
        return g * (self.dim / self.q)


class SPSA(Estimator):
    """Simultaneous perturbation (Spall): Rademacher Δ, ĝ = mean_j [f(θ + cΔ_j) − f(θ − cΔ_j)]/(2c) · Δ_j
    (1/Δ = Δ for ±1 entries)."""

    kind = "spsa"

    def __init__(self, dim, *, directions=1, smoothing=0.01):
        super().__init__(dim, directions=directions, smoothing=smoothing)

    @property
    def population(self):
        return 2 * self.q

    def _perturbation(self, generator):
        return torch.randint(0, 2, (self.q, self.dim), generator=generator).float() * 2 - 1

    def _c(self) -> float:
        return self.mu

    def propose(self, theta, generator):
        self._directions = self._perturbation(generator)             # (q, d)
        self._c_step = self._c()                                     # c_k, kept for estimate
        return torch.cat([theta + self._c_step * self._directions, theta - self._c_step * self._directions])

    def estimate(self, losses):
        self.step_count += 1
        diff = (losses[: self.q] - losses[self.q:]) / (2 * self._c_step)  # (q,)
        return (diff[:, None] / self._directions).mean(dim=0)


class SPSAGC(SPSA):
    """BlackVIP's SPSA with gradient correction (Oh et al., CVPR 2023).

    Δ = ±U[0.5, 1] ("segmented uniform"), c_k = c / k^γ, R = q draws per step, and a
    Nesterov-like correction: m ← βm + ĝ, the step direction is ĝ + βm. The authors' step
    size a_k = a/(k + o)^α is the ``poly`` schedule of the step rule."""

    kind = "spsa-gc"

    def __init__(self, dim, *, directions=5, smoothing=0.01, gamma: float = 0.1, beta: float = 0.9):
        super().__init__(dim, directions=directions, smoothing=smoothing)
        self.gamma, self.beta = float(gamma), float(beta)
        self.momentum = torch.zeros(self.dim)

    def _perturbation(self, generator):
        sign = torch.randint(0, 2, (self.q, self.dim), generator=generator).float() * 2 - 1
        return sign * (0.5 + 0.5 * torch.rand(self.q, self.dim, generator=generator))

    def _c(self):
        return self.mu / math.pow(self.step_count + 1, self.gamma)

    def estimate(self, losses):
        g = super().estimate(losses)
        self.momentum = self.beta * self.momentum + g
        return g + self.beta * self.momentum

    def state_dict(self):
        return {**super().state_dict(), "momentum": self.momentum.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.momentum = state["momentum"].clone()


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.kind: cls for cls in (RandomDirection, Antithetic, Coordinate, SPSA, SPSAGC)}


def make_estimator(kind: str, dim: int, *, directions: int, smoothing: float,
                   distribution: str = "gaussian") -> Estimator:
    if kind not in ESTIMATORS:
        raise Refusal(f"unknown estimator {kind!r}; expected one of: {', '.join(ESTIMATORS)}")
    if kind in ("random", "antithetic"):
        return ESTIMATORS[kind](dim, directions=directions, smoothing=smoothing, distribution=distribution)
    return ESTIMATORS[kind](dim, directions=directions, smoothing=smoothing)
