"""Estimators agree with the true gradient of a quadratic in expectation.

On f(θ) = ½ θᵀAθ + bᵀθ every estimator here is unbiased for ∇f up to O(μ²) (central
differences are exact on a quadratic; one-sided ones carry a μ/2·E[u uᵀAu] term which is
small at μ = 1e-3). A single one-sided estimate with q directions in d dimensions has an
expected cosine with the truth of only about √(q/(d+q)) (≈ 0.3 for d = 100, q = 10), so we
average N independent estimates: the noise shrinks as 1/√N and the cosine of the mean goes
to 1. With N = 3000, d = 100, q = 10 the relative error of the mean is ≈ √(d/(qN)) ≈ 0.06,
so a cosine > 0.98 is a safe threshold that a biased or wrongly scaled estimator misses
(scale errors are caught by the norm-ratio check instead: within 10 %).
"""
import pytest
import torch

from blackbox_reprog.search.estimators import ESTIMATORS

D = 100


def quadratic():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(D, D, generator=g) / D ** 0.5
    a = m @ m.T + torch.eye(D)                 # (d, d) positive definite
    b = torch.randn(D, generator=g)
    theta = torch.randn(D, generator=g)
    f = lambda t: 0.5 * (t @ a * t).sum(-1) + t @ b   # (P, d) → (P,)
    return f, a @ theta + b, theta


@pytest.mark.parametrize("kind, directions, smoothing, distribution", [
    ("random", 10, 1e-3, "gaussian"),
    ("random", 10, 1e-3, "sphere"),
    ("antithetic", 5, 1e-2, "gaussian"),
    ("antithetic", 5, 1e-2, "sphere"),
    ("coordinate", 10, 1e-2, "gaussian"),
    ("spsa", 2, 1e-2, "gaussian"),
])
def test_mean_estimate_matches_true_gradient(kind, directions, smoothing, distribution):
    f, true_grad, theta = quadratic()
    shape = {"distribution": distribution} if ESTIMATORS.takes(kind, "distribution") else {}
    est = ESTIMATORS.make(kind, D, directions=directions, smoothing=smoothing, **shape)
    gen = torch.Generator().manual_seed(1)
    n = 3000
    total = torch.zeros(D)
    for _ in range(n):
        proposal = est.propose(theta, gen)
        assert proposal.thetas.shape == (est.population, D)
        total += est.estimate(proposal, f(proposal.thetas))
    mean = total / n
    cosine = torch.nn.functional.cosine_similarity(mean, true_grad, dim=0)
    assert cosine > 0.98, f"{kind}: cosine {cosine:.3f}"
    assert abs(mean.norm() / true_grad.norm() - 1) < 0.1


def test_coordinate_with_all_coordinates_is_exact_on_a_quadratic():
    f, true_grad, theta = quadratic()
    est = ESTIMATORS.make("coordinate", D, directions=D, smoothing=1e-2)
    proposal = est.propose(theta, torch.Generator().manual_seed(0))
    g = est.estimate(proposal, f(proposal.thetas))
    assert torch.allclose(g, true_grad, rtol=1e-2, atol=5e-2)   # float32 round-off only


def test_spsa_gc_adds_the_momentum_correction():
    f, true_grad, theta = quadratic()
    est = ESTIMATORS.make("spsa-gc", D, directions=5, smoothing=1e-2)
    gen = torch.Generator().manual_seed(0)
    proposal = est.propose(theta, gen)
    first = est.estimate(proposal, f(proposal.thetas))
    raw_first = first / (1 + est.beta)           # m₁ = ĝ₁, so direction = ĝ₁(1 + β)
    assert torch.allclose(est.momentum, raw_first)
    assert est.population == 10                  # R = 5 draws × 2 evaluations (BlackVIP)


def test_spsa_gc_divides_by_the_perturbation_size_it_used():
    """c_k shrinks every step (c/k^γ): the difference quotient must divide by the c_k the
    programs were perturbed with, not the next one (2^0.1, 7 % too large on the first step)."""
    est = ESTIMATORS.make("spsa-gc", 1, directions=3, smoothing=0.1)
    gen = torch.Generator().manual_seed(0)
    theta = torch.zeros(1)
    for _ in range(3):                          # f(θ) = 3θ: in one dimension every draw gives 3 exactly
        proposal = est.propose(theta, gen)
        raw = est.estimate(proposal, 3.0 * proposal.thetas[:, 0]) - est.beta * est.momentum
        assert torch.allclose(raw, torch.tensor([3.0]), rtol=1e-5)


def test_populations_match_documented_costs():
    assert ESTIMATORS.make("random", 8, directions=20, smoothing=0.01).population == 21
    assert ESTIMATORS.make("antithetic", 8, directions=3, smoothing=0.01).population == 6
    assert ESTIMATORS.make("spsa", 8, directions=1, smoothing=0.01).population == 2


def test_same_seed_same_perturbations():
    for kind in ESTIMATORS.kinds():
        a = ESTIMATORS.make(kind, 16, directions=4, smoothing=0.01)
        b = ESTIMATORS.make(kind, 16, directions=4, smoothing=0.01)
        theta = torch.zeros(16)
        assert torch.equal(a.propose(theta, torch.Generator().manual_seed(7)).thetas,
                           b.propose(theta, torch.Generator().manual_seed(7)).thetas)


def test_an_estimator_keeps_nothing_between_propose_and_estimate():
    """Two proposals in flight at once are each estimated from their own directions."""
    f, _, theta = quadratic()
    est = ESTIMATORS.make("antithetic", D, directions=2, smoothing=1e-2)
    gen = torch.Generator().manual_seed(3)
    first, second = est.propose(theta, gen), est.propose(theta, gen)
    alone = ESTIMATORS.make("antithetic", D, directions=2, smoothing=1e-2)
    assert torch.equal(est.estimate(first, f(first.thetas)), alone.estimate(first, f(first.thetas)))
    assert not torch.equal(first.directions, second.directions)
