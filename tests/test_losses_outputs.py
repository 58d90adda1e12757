import numpy as np
import pytest
import torch

from blackbox_reprog.backends.base import Prediction
from blackbox_reprog.program.losses import LOSSES
from blackbox_reprog.backends.outputs import FLOOR, LABEL_EPSILON, source_log_probs


def test_cross_entropy_matches_torch_per_population_row():
    logits = torch.randn(4, 6, 3)                                # (P, B, K)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ours = LOSSES.make("ce")(logits, y)
    ref = torch.stack([torch.nn.functional.cross_entropy(l, y) for l in logits])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_focal_loss_with_gamma_zero_is_class_weighted_cross_entropy():
    logits = torch.randn(2, 5, 2)
    y = torch.tensor([0, 0, 0, 0, 1])
    focal = LOSSES.make("focal", gamma=0.0, class_counts=[4, 1])
    w = torch.tensor([0.25, 1.0]); w = w / w.sum() * 2
    ref = torch.stack([(torch.nn.functional.cross_entropy(l, y, reduction="none") * w[y]).mean() for l in logits])
    assert torch.allclose(focal(logits, y), ref, atol=1e-6)
    # γ = 2 down-weights confident examples: always ≤ the γ = 0 loss
    assert (LOSSES.make("focal", gamma=2.0, class_counts=[4, 1])(logits, y) <= focal(logits, y) + 1e-7).all()


def test_logits_and_probs_give_the_same_log_probabilities():
    logits = np.array([[1.0, 2.0, 0.5]], np.float32)
    probs = np.exp(logits) / np.exp(logits).sum()
    a = source_log_probs(Prediction("logits", 3, scores=logits))
    b = source_log_probs(Prediction("probs", 3, scores=probs))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.isfinite(source_log_probs(Prediction("probs", 3, scores=np.array([[1.0, 0.0, 0.0]])))).all()


def test_topk_spreads_the_missing_mass_and_label_only_uses_epsilon():
    topk = Prediction("topk", 5, scores=np.array([[0.6, 0.2]]), labels=np.array([[3, 1]]))
    p = source_log_probs(topk).exp()[0]
    assert torch.allclose(p, torch.tensor([0.2 / 3, 0.2, 0.2 / 3, 0.6, 0.2 / 3]), atol=1e-6)
    full = Prediction("topk", 3, scores=np.array([[0.9, 0.1]]), labels=np.array([[0, 2]]))
    assert torch.allclose(source_log_probs(full).exp()[0, 1], torch.tensor(FLOOR))
    label = source_log_probs(Prediction("label", 4, labels=np.array([[2]]))).exp()[0]
    assert torch.allclose(label, torch.tensor([LABEL_EPSILON / 3] * 2 + [1 - LABEL_EPSILON] + [LABEL_EPSILON / 3]))


def test_topk_scores_summing_above_one_are_renormalised():
    # 0.9 + 0.6 = 1.5 > 1 + 1e-3: divided by 1.5 → 0.6, 0.4; nothing is left for the others
    over = Prediction("topk", 4, scores=np.array([[0.9, 0.6]]), labels=np.array([[1, 3]]))
    p = source_log_probs(over).exp()[0]
    assert torch.allclose(p, torch.tensor([FLOOR, 0.6, FLOOR, 0.4]), rtol=1e-6, atol=0)
    # 1.0005 is within the tolerance: kept as is, the other class gets FLOOR
    rounded = Prediction("topk", 3, scores=np.array([[0.7005, 0.3]]), labels=np.array([[0, 1]]))
    p = source_log_probs(rounded).exp()[0]
    assert torch.allclose(p, torch.tensor([0.7005, 0.3, FLOOR]), rtol=1e-6, atol=0)
    # rows are handled independently: the second row sums to 0.5 and keeps its spread mass
    mixed = Prediction("topk", 3, scores=np.array([[2.0, 2.0], [0.3, 0.2]]), labels=np.array([[2, 0], [0, 1]]))
    p = source_log_probs(mixed).exp()
    assert torch.allclose(p, torch.tensor([[0.5, FLOOR, 0.5], [0.3, 0.2, 0.5]]), rtol=1e-6, atol=0)


def test_margin_loss_hand_case():
    scores = torch.tensor([[[3.0, 1.0, 0.0],      # y=0 leads by 2 ≥ κ: 0
                            [1.0, 1.5, 0.0],      # y=0 trails by 0.5: 1 + 0.5 = 1.5
                            [0.0, 0.2, 0.0]],     # y=2 ties with class 0, class 1 leads: 1 + 0.2 = 1.2
                           [[0.0, 0.0, 0.0],      # all equal (e.g. floored top-k scores): κ = 1
                            [0.0, 5.0, 0.0],      # y=0 trails class 1 by 5: 1 + 5 = 6
                            [0.0, 0.0, 0.5]]])    # y=2 leads by 0.5: 1 − 0.5 = 0.5
    y = torch.tensor([0, 0, 2])
    assert torch.allclose(LOSSES.make("margin")(scores, y), torch.tensor([2.7 / 3, 7.5 / 3]))
    # κ = 0.5: 0, 1.0, 0.7 and 0.5, 5.5, 0
    assert torch.allclose(LOSSES.make("margin", margin=0.5)(scores, y), torch.tensor([1.7 / 3, 6.0 / 3]))


def test_zero_one_loss_hand_case():
    scores = torch.tensor([[[3.0, 1.0], [1.0, 2.0], [0.0, 1.0], [2.0, 2.0]],
                           [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])   # (P=2, B=4, K=2)
    y = torch.tensor([0, 0, 1, 1])
    # row 0: right, wrong, right, tie → class 0, wrong; row 1: wrong, right, right, right
    assert torch.equal(LOSSES.make("zero-one")(scores, y), torch.tensor([0.5, 0.25]))
    assert LOSSES.make("zero-one")(scores[0], y).shape == ()


@pytest.mark.parametrize("kind, options, message", [
    ("hinge", {}, "unknown loss.kind 'hinge'; expected one of: ce, focal, margin, zero-one"),
    ("margin", {"margin": -1.0}, "expected loss.margin at least 0, got -1.0"),
    ("ce", {"gamma": 2.0}, "unknown config key loss.gamma for loss.kind 'ce'; 'ce' takes no parameters"),
])
def test_bad_losses_are_refused(kind, options, message):
    with pytest.raises(ValueError, match=message):
        LOSSES.make(kind, **options)
