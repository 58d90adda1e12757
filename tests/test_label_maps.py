import pytest
import torch

from blackbox_reprog.label_maps import make_label_map, target_accuracy


def log_probs_from_top1(top1, classes):
    p = torch.full((len(top1), classes), 0.01)
    p[torch.arange(len(top1)), torch.tensor(top1)] = 1.0
    return (p / p.sum(dim=1, keepdim=True)).log()


def test_frequency_map_greedy_hand_case():
    # counts C[s, t]: s0→t0 ×3, s1→t0 ×2, s1→t1 ×1, s2→t1 ×2, s3→t1 ×1
    top1 = [0, 0, 0, 1, 1, 1, 2, 2, 3]
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    m = make_label_map("frequency", 5, 2, per_class=1).fit(log_probs_from_top1(top1, 5), y)
    # largest is (s0, t0)=3 → t0 full; next (s2, t1)=2 → t1 full
    assert m.sources_of(0) == [0] and m.sources_of(1) == [2]
    m2 = make_label_map("frequency", 5, 2, per_class=2).fit(log_probs_from_top1(top1, 5), y)
    # then (s1, t0)=2 completes t0; s1 is retired so t1 takes s3 (count 1)
    assert m2.sources_of(0) == [0, 1] and m2.sources_of(1) == [2, 3]


def test_many_to_one_scores_are_the_mean_probability_of_the_sources():
    m = make_label_map("frequency", 4, 2, per_class=2)
    m.assignment = torch.tensor([0, 1, 0, 1])
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    out = m(p.log())
    assert torch.allclose(out.exp(), torch.tensor([[0.2, 0.3]]))


def test_random_map_is_seeded_and_needs_no_fit():
    a = make_label_map("random", 100, 3, per_class=5, seed=1)
    b = make_label_map("random", 100, 3, per_class=5, seed=1)
    c = make_label_map("random", 100, 3, per_class=5, seed=2)
    assert torch.equal(a.assignment, b.assignment) and not torch.equal(a.assignment, c.assignment)
    assert not a.needs_fit and all(len(a.sources_of(t)) == 5 for t in range(3))


def test_linear_head_learns_a_separable_task():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    features = torch.randn(300, 20, generator=g)
    features[torch.arange(300), y] += 5.0                      # class signal in 3 source outputs
    log_probs = torch.log_softmax(features, dim=1)
    head = make_label_map("linear", 20, 3).fit(log_probs[:200], y[:200])
    assert target_accuracy(head(log_probs[200:]), y[200:]) > 0.9
    assert head(log_probs[None, :5]).shape == (1, 5, 3)       # population axis passes through


def test_iterative_map_refits_each_epoch():
    assert make_label_map("iterative", 10, 2, per_class=2).refit_each_epoch
    assert not make_label_map("frequency", 10, 2).refit_each_epoch


@pytest.mark.parametrize("kind, args, message", [
    ("frequency", (10, 20), "expected at most 10 target classes for a model with 10 classes, got 20"),
    ("frequency", (10, 3), r"expected per_class × classes ≤ 10, got 4 × 3"),
    ("bayes", (10, 2), "unknown label map 'bayes'"),
])
def test_maps_the_model_cannot_cover_are_refused(kind, args, message):
    with pytest.raises(ValueError, match=message):
        make_label_map(kind, *args, per_class=4 if args == (10, 3) else 1)
