"""Zeroth-order gradient estimators.

An estimator never sees the backend. Each step it proposes a population of programs
(``propose``: θ → a ``Proposal`` holding the (P, d) programs and the directions drawn); the
trainer evaluates all P on the same batch in one batched call (common random numbers) and
hands back their losses; ``estimate(proposal, losses)`` turns those into ĝ. Nothing is kept
between the two calls: the proposal carries it.
Perturbations are drawn from the run's seeded generator, so a run replays exactly from its seed.

Costs per step on a batch of B examples: one-sided B·(q+1), two-sided / SPSA / coordinate 2·B·q.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch

from ..components import Above, AtLeast, Family, OneOf
from ..errors import Refusal

#: estimator kind → class; built from the dimension d of θ
ESTIMATORS = Family("estimator")


@dataclass(frozen=True)
class Proposal:
    """What one step evaluates, and what ``estimate`` needs to turn its losses into ĝ."""

    thetas: torch.Tensor          # (P, d) the programs to evaluate
    directions: torch.Tensor      # (q, d) perturbations, or (q,) coordinates for Coordinate
    scale: float                  # the smoothing radius μ, or SPSA's c_k of this step


class Estimator:
    kind: str = ""

    def __init__(self, dim: int, *, directions: Annotated[int, AtLeast(1)] = 10,
                 smoothing: Annotated[float, Above(0)] = 0.005):
        self.dim, self.q, self.mu = int(dim), int(directions), float(smoothing)
        if self.q < 1:
            raise Refusal(f"expected at least 1 direction, got {self.q}")
        if not self.mu > 0:
            raise Refusal(f"expected a smoothing radius above 0, got {self.mu}")
        self.step_count = 0

    @property
    def population(self) -> int:
        """How many programs one step evaluates."""
        raise NotImplementedError

    def propose(self, theta: torch.Tensor, generator: torch.Generator) -> Proposal:
        """θ (d,) → the (P, d) programs to evaluate, with the directions drawn."""
        raise NotImplementedError

    def estimate(self, proposal: Proposal, losses: torch.Tensor) -> torch.Tensor:
        """(P,) losses of the proposed programs → ĝ (d,)."""
        raise NotImplementedError

    def _draw(self, generator, distribution: str) -> torch.Tensor:
        """(q, d) directions: Gaussian, or uniform on the unit sphere."""
        u = torch.randn(self.q, self.dim, generator=generator)
        if distribution == "sphere":
            u = u / u.norm(dim=1, keepdim=True)
        return u


@ESTIMATORS.register
class RandomDirection(Estimator):
    """One-sided: ĝ = (φ/q) Σ_j [f(θ + μu_j) − f(θ)]/μ · u_j, sharing the base evaluation f(θ).
    φ = d for unit-sphere directions (BAR: b = d), 1 for Gaussian ones — both unbiased for the
    gradient of the smoothed loss."""

    kind = "random"

    def __init__(self, dim, *, distribution: Annotated[str, OneOf("gaussian", "sphere")] = "gaussian", **rest):
        super().__init__(dim, **rest)
        if distribution not in ("gaussian", "sphere"):
            raise Refusal(f"expected distribution gaussian or sphere, got {distribution!r}")
        self.distribution = distribution
        self.phi = float(self.dim) if distribution == "sphere" else 1.0

    @property
    def population(self):
        return self.q + 1

    def propose(self, theta, generator):
        u = self._draw(generator, self.distribution)                                  # (q, d)
        return Proposal(torch.cat([theta[None], theta + self.mu * u]), u, self.mu)    # (q+1, d)

    def estimate(self, proposal, losses):
        self.step_count += 1
        slopes = (losses[1:] - losses[0]) / proposal.scale                            # (q,)
        return self.phi / self.q * (slopes @ proposal.directions)


@ESTIMATORS.register
class Antithetic(RandomDirection):
    """Two-sided: ĝ = (φ/q) Σ_j [f(θ + μu_j) − f(θ − μu_j)]/(2μ) · u_j. Lower bias and
    variance than one-sided at 2q evaluations; with q = 1 it is ZO-Bench's usual baseline."""

    kind = "antithetic"

    @property
    def population(self):
        return 2 * self.q

    def propose(self, theta, generator):
        u = self._draw(generator, self.distribution)                                  # (q, d)
        return Proposal(torch.cat([theta + self.mu * u, theta - self.mu * u]), u, self.mu)   # (2q, d)

    def estimate(self, proposal, losses):
        self.step_count += 1
        slopes = (losses[: self.q] - losses[self.q:]) / (2 * proposal.scale)          # (q,)
        return self.phi / self.q * (slopes @ proposal.directions)


@ESTIMATORS.register
class Coordinate(Estimator):
    """Central differences on q random coordinates, scaled by d/q so the estimate is unbiased
    over the choice of coordinates; q = d gives the full finite-difference gradient (DeepZero)."""

    kind = "coordinate"

    def __init__(self, dim, *, directions: Annotated[int, AtLeast(1)] = 10, **rest):
        super().__init__(dim, directions=min(directions, dim), **rest)

    @property
    def population(self):
        return 2 * self.q

    def propose(self, theta, generator):
        coords = torch.randperm(self.dim, generator=generator)[: self.q]              # (q,)
        steps = torch.zeros(self.q, self.dim)
        steps[torch.arange(self.q), coords] = self.mu
        return Proposal(torch.cat([theta + steps, theta - steps]), coords, self.mu)   # (2q, d)

    def estimate(self, proposal, losses):
        self.step_count += 1
        g = torch.zeros(self.dim)
        g[proposal.directions] = (losses[: self.q] - losses[self.q:]) / (2 * proposal.scale)
        return g * (self.dim / self.q)


@ESTIMATORS.register
class SPSA(Estimator):
    """Simultaneous perturbation (Spall): Rademacher Δ, ĝ = mean_j [f(θ + cΔ_j) − f(θ − cΔ_j)]/(2c) · Δ_j
    (1/Δ = Δ for ±1 entries)."""

    kind = "spsa"

    @property
    def population(self):
        return 2 * self.q

    def _perturbation(self, generator):
        return torch.randint(0, 2, (self.q, self.dim), generator=generator).float() * 2 - 1

    def _c(self) -> float:
        return self.mu

    def propose(self, theta, generator):
        delta, c = self._perturbation(generator), self._c()                           # (q, d), c_k
        return Proposal(torch.cat([theta + c * delta, theta - c * delta]), delta, c)  # (2q, d)

    def estimate(self, proposal, losses):
        self.step_count += 1
        diff = (losses[: self.q] - losses[self.q:]) / (2 * proposal.scale)           # (q,)
        return (diff[:, None] / proposal.directions).mean(dim=0)


@ESTIMATORS.register
class SPSAGC(SPSA):
    """BlackVIP's SPSA with gradient correction (Oh et al., CVPR 2023).

    Δ = ±U[0.5, 1] ("segmented uniform"), c_k = c / k^γ, R = q draws per step, and a
    Nesterov-like correction: m ← βm + ĝ, the step direction is ĝ + βm. The authors' step
    size a_k = a/(k + o)^α is the ``poly`` schedule of the step rule."""

    kind = "spsa-gc"

    def __init__(self, dim, *, gamma: Annotated[float, AtLeast(0)] = 0.1, beta: Annotated[float, AtLeast(0)] = 0.9,
                 **rest):
        super().__init__(dim, **rest)
        self.gamma, self.beta = float(gamma), float(beta)
        self.momentum = torch.zeros(self.dim)

    def _perturbation(self, generator):
        sign = torch.randint(0, 2, (self.q, self.dim), generator=generator).float() * 2 - 1
        return sign * (0.5 + 0.5 * torch.rand(self.q, self.dim, generator=generator))

    def _c(self):
        return self.mu / math.pow(self.step_count + 1, self.gamma)

    def estimate(self, proposal, losses):
        g = super().estimate(proposal, losses)
        self.momentum = self.beta * self.momentum + g
        return g + self.beta * self.momentum
