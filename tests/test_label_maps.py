import io

import numpy as np
import pytest
import torch

from blackbox_reprog.backends.base import Prediction
from blackbox_reprog.program.label_maps import LABEL_MAPS, target_accuracy
from blackbox_reprog.backends.outputs import source_log_probs


def log_probs_from_top1(top1, classes):
    p = torch.full((len(top1), classes), 0.01)
    p[torch.arange(len(top1)), torch.tensor(top1)] = 1.0
    return (p / p.sum(dim=1, keepdim=True)).log()


def test_frequency_map_greedy_hand_case():
    # counts C[s, t]: s0→t0 ×3, s1→t0 ×2, s1→t1 ×1, s2→t1 ×2, s3→t1 ×1
    top1 = [0, 0, 0, 1, 1, 1, 2, 2, 3]
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    m = LABEL_MAPS.make("frequency", 5, 2, per_class=1).fit(log_probs_from_top1(top1, 5), y)
    # largest is (s0, t0)=3 → t0 full; next (s2, t1)=2 → t1 full
    assert m.sources_of(0) == [0] and m.sources_of(1) == [2]
    m2 = LABEL_MAPS.make("frequency", 5, 2, per_class=2).fit(log_probs_from_top1(top1, 5), y)
    # then (s1, t0)=2 completes t0; s1 is retired so t1 takes s3 (count 1)
    assert m2.sources_of(0) == [0, 1] and m2.sources_of(1) == [2, 3]


def test_many_to_one_scores_are_the_mean_probability_of_the_sources():
    m = LABEL_MAPS.make("frequency", 4, 2, per_class=2)
    m.assignment = torch.tensor([0, 1, 0, 1])
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    out = m(p.log())
    assert torch.allclose(out.exp(), torch.tensor([[0.2, 0.3]]))


def test_random_map_is_seeded_and_needs_no_fit():
    a = LABEL_MAPS.make("random", 100, 3, per_class=5, seed=1)
    b = LABEL_MAPS.make("random", 100, 3, per_class=5, seed=1)
    c = LABEL_MAPS.make("random", 100, 3, per_class=5, seed=2)
    assert torch.equal(a.assignment, b.assignment) and not torch.equal(a.assignment, c.assignment)
    assert not a.needs_fit and all(len(a.sources_of(t)) == 5 for t in range(3))


def test_linear_head_learns_a_separable_task():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    features = torch.randn(300, 20, generator=g)
    features[torch.arange(300), y] += 5.0                      # class signal in 3 source outputs
    log_probs = torch.log_softmax(features, dim=1)
    head = LABEL_MAPS.make("linear", 20, 3).fit(log_probs[:200], y[:200])
    assert target_accuracy(head(log_probs[200:]), y[200:]) > 0.9
    assert head(log_probs[None, :5]).shape == (1, 5, 3)       # population axis passes through


def test_iterative_map_refits_each_epoch():
    assert LABEL_MAPS.make("iterative", 10, 2, per_class=2).refit_each_epoch
    assert not LABEL_MAPS.make("frequency", 10, 2).refit_each_epoch


@pytest.mark.parametrize("kind, args, message", [
    ("frequency", (10, 20), "expected at most 10 target classes for a model with 10 classes, got 20"),
    ("frequency", (10, 3), r"expected label_map.per_class × target classes ≤ the model's 10 classes, got 4 × 3; set "
                     r"label_map.per_class to at most 3"),
    ("bayes", (10, 2), "unknown label_map.kind 'bayes'; expected one of: random, frequency, iterative, linear, blm, blm\\+"),
    ("blm", (10, 20), "expected at most 10 target classes for a model with 10 classes, got 20"),
])
def test_maps_the_model_cannot_cover_are_refused(kind, args, message):
    with pytest.raises(ValueError, match=message):
        LABEL_MAPS.make(kind, *args, **({"per_class": 4} if args == (10, 3) else {}))


# BLM hand case, 3 source × 2 target, λ = 1. Counts C[s, t]:
#   s0: t0 ×3, t1 ×1   row sum 4 → ω_raw = [3/5, 1/5]
#   s1: t0 ×1          row sum 1 → ω_raw = [1/2, 0]
#   s2: t1 ×2          row sum 2 → ω_raw = [0, 2/3]
# column sums: t0 = 3/5 + 1/2 = 11/10, t1 = 1/5 + 2/3 = 13/15
BLM_TOP1 = [0, 0, 0, 0, 1, 2, 2]
BLM_Y = torch.tensor([0, 0, 0, 1, 0, 1, 1])
BLM_OMEGA = torch.tensor([[6 / 11, 3 / 13],
                          [5 / 11, 0.0],
                          [0.0, 10 / 13]])


def test_blm_weights_and_scores_hand_case():
    m = LABEL_MAPS.make("blm", 3, 2).fit(log_probs_from_top1(BLM_TOP1, 3), BLM_Y)
    assert torch.allclose(m.omega, BLM_OMEGA, atol=1e-6)
    # p = [0.5, 0.3, 0.2]: t0 = 0.5·6/11 + 0.3·5/11 = 9/22, t1 = 0.5·3/13 + 0.2·10/13 = 7/26
    out = m(torch.tensor([[0.5, 0.3, 0.2]]).log())
    assert torch.allclose(out.exp(), torch.tensor([[9 / 22, 7 / 26]]), atol=1e-6)
    assert m.refit_each_epoch and m.needs_fit


def test_blm_lambda_changes_the_weights():
    # λ = 0: ω_raw rows are the conditional frequencies [3/4, 1/4], [1, 0], [0, 1];
    # columns sum to 7/4 and 5/4
    m = LABEL_MAPS.make("blm", 3, 2, blm_lambda=0.0).fit(log_probs_from_top1(BLM_TOP1, 3), BLM_Y)
    assert torch.allclose(m.omega, torch.tensor([[3 / 7, 1 / 5], [4 / 7, 0.0], [0.0, 4 / 5]]), atol=1e-6)


def test_blm_from_label_only_answers_equals_the_count_based_map():
    # a label-only API gives ε-smoothed one-hot log-probabilities; only their argmax is counted
    label_only = source_log_probs(Prediction("label", 3, labels=np.array(BLM_TOP1)[:, None]))
    m = LABEL_MAPS.make("blm", 3, 2).fit(label_only, BLM_Y)
    assert torch.allclose(m.omega, BLM_OMEGA, atol=1e-6)


def test_blm_target_class_without_examples_gets_a_uniform_column():
    # no example of t2: column 2 is 1/3 everywhere, so t2 scores log(1/3) for any input
    m = LABEL_MAPS.make("blm", 3, 3).fit(log_probs_from_top1(BLM_TOP1, 3), BLM_Y)
    assert torch.allclose(m.omega[:, :2], BLM_OMEGA, atol=1e-6)
    assert torch.allclose(m.omega[:, 2], torch.tensor([1 / 3] * 3))
    out = m(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]).log())
    assert torch.allclose(out[:, 2].exp(), torch.tensor([1 / 3, 1 / 3]))
    assert torch.isfinite(out).all()


def test_blm_plus_sums_top_k_probabilities_hand_case():
    # 4 source × 2 target, k = 2, λ = 1
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1],     # y = 0: keeps s0 0.5, s1 0.3
                      [0.2, 0.6, 0.1, 0.1],     # y = 0: keeps s1 0.6, s0 0.2
                      [0.1, 0.2, 0.3, 0.4]])    # y = 1: keeps s3 0.4, s2 0.3
    y = torch.tensor([0, 0, 1])
    # C = [[0.7, 0], [0.9, 0], [0, 0.3], [0, 0.4]]; rows + λ: 1.7, 1.9, 1.3, 1.4
    # ω_raw = [[7/17, 0], [9/19, 0], [0, 3/13], [0, 2/7]]; columns: 286/323 and 47/91
    m = LABEL_MAPS.make("blm+", 4, 2, blm_topk=2).fit(p.log(), y)
    assert m.topk == 2 and m.refit_each_epoch
    expected = torch.tensor([[133 / 286, 0.0],
                             [153 / 286, 0.0],
                             [0.0, 21 / 47],
                             [0.0, 26 / 47]])
    assert torch.allclose(m.omega, expected, atol=1e-6)
    # p = [0.1, 0.2, 0.3, 0.4]: t0 = (13.3 + 30.6)/286 = 43.9/286, t1 = (6.3 + 10.4)/47 = 16.7/47
    out = m(p[2:].log())
    assert torch.allclose(out.exp(), torch.tensor([[43.9 / 286, 16.7 / 47]]), atol=1e-6)


def test_blm_plus_with_k_1_on_one_hot_answers_equals_blm():
    # top-1 probabilities of 1 make BLM+'s sums the BLM counts
    onehot = torch.full((7, 3), 1e-30)
    onehot[torch.arange(7), torch.tensor(BLM_TOP1)] = 1.0
    m = LABEL_MAPS.make("blm+", 3, 2, blm_topk=1).fit(onehot.log(), BLM_Y)
    assert torch.allclose(m.omega, BLM_OMEGA, atol=1e-6)


@pytest.mark.parametrize("num_target, k", [(2, 1), (6, 1), (7, 1), (10, 1), (14, 2), (100, 15), (397, 59)])
def test_blm_plus_default_k_is_15_percent_of_the_target_classes(num_target, k):
    assert LABEL_MAPS.make("blm+", 1000, num_target).topk == k
    assert LABEL_MAPS.make("blm+", 1000, num_target, blm_topk=0).topk == k


@pytest.mark.parametrize("kind, options, message", [
    ("blm+", {"blm_topk": 11}, r"expected a BLM\+ top-k in \[1, 10\], got 11"),
    ("blm+", {"blm_topk": -1}, r"expected label_map.blm_topk at least 0, got -1"),
    ("blm", {"blm_lambda": -1.0}, "expected label_map.blm_lambda at least 0, got -1.0"),
    ("blm", {"blm_topk": 2}, "unknown config key label_map.blm_topk for label_map.kind 'blm'; 'blm' takes "
                             "blm_lambda, refit_every"),
])
def test_blm_options_out_of_range_are_refused(kind, options, message):
    with pytest.raises(ValueError, match=message):
        LABEL_MAPS.make(kind, 10, 2, **options)


def test_blm_refuses_labels_outside_the_target_classes():
    with pytest.raises(ValueError, match=r"expected target labels in \[0, 2\), got labels in \[0, 2\]"):
        LABEL_MAPS.make("blm", 3, 2).fit(log_probs_from_top1([0, 1], 3), torch.tensor([0, 2]))


@pytest.mark.parametrize("kind", ["blm", "blm+"])
def test_blm_state_round_trips_through_a_weights_only_load(kind):
    topk = {"blm_topk": 2} if kind == "blm+" else {}
    m = LABEL_MAPS.make(kind, 3, 2, **topk).fit(log_probs_from_top1(BLM_TOP1, 3), BLM_Y)
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    fresh = LABEL_MAPS.make(kind, 3, 2, **topk)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.log_softmax(torch.randn(2, 5, 3), dim=-1)          # (P, B, C)
    assert fresh(x).shape == (2, 5, 2) and torch.equal(fresh(x), m(x))


# knn hand case: 3 source classes, 4 training answers in two clusters; standardised per class
KNN_TRAIN = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.05, 0.05, 0.9]]).log()
KNN_Y = torch.tensor([0, 0, 1, 1])


def test_knn_votes_of_the_nearest_answers_hand_case():
    m = LABEL_MAPS.make("knn", 3, 2, neighbours=3).fit(KNN_TRAIN, KNN_Y)
    near_first = torch.tensor([[[0.85, 0.1, 0.05]]]).log()           # (P=1, B=1, C): by cluster 0
    # the 3 nearest: both of class 0 and one of class 1 → shares (2 + ½)/(3 + 1), (1 + ½)/(3 + 1)
    assert torch.allclose(m(near_first).exp(), torch.tensor([[[2.5 / 4, 1.5 / 4]]]), atol=1e-6)
    one = LABEL_MAPS.make("knn", 3, 2, neighbours=1).fit(KNN_TRAIN, KNN_Y)
    assert torch.allclose(one(KNN_TRAIN).exp(), torch.tensor([[0.75, 0.25]] * 2 + [[0.25, 0.75]] * 2))


def test_knn_is_configured_refused_and_saved_like_any_map(tmp_path):
    from blackbox_reprog.run.config import ConfigError, load_config
    config = load_config(overrides=("label_map.kind=knn", "label_map.neighbours=3"))
    assert config.label_map.as_dict() == {"kind": "knn", "neighbours": 3}
    with pytest.raises(ConfigError, match="expected label_map.neighbours at least 1, got 0"):
        load_config(overrides=("label_map.kind=knn", "label_map.neighbours=0"))
    with pytest.raises(ValueError, match="expected the knn label map to be fitted on answers before scoring"):
        LABEL_MAPS.make("knn", 3, 2)(KNN_TRAIN)
    m = LABEL_MAPS.make("knn", 3, 2, neighbours=3).fit(KNN_TRAIN, KNN_Y)
    torch.save(m.state_dict(), tmp_path / "map.pt")
    fresh = LABEL_MAPS.make("knn", 3, 2, neighbours=3)
    fresh.load_state_dict(torch.load(tmp_path / "map.pt", weights_only=True))
    assert torch.equal(fresh(KNN_TRAIN), m(KNN_TRAIN))
    assert fresh.explain(["a", "b"])[-2:] == ["| a | 2 |", "| b | 2 |"]
