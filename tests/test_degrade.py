import json

import numpy as np
import pytest
import torch

from blackbox_reprog.backends.base import CallableBackend, Capabilities
from blackbox_reprog.backends.degrade import DegradedBackend, degrade
from blackbox_reprog.backends.registry import create_backend
from blackbox_reprog.backends.testing import _valid_batch, check_backend

CHECKS = ["check_declarations", "check_answers", "check_deterministic",
          "check_batch_independence", "check_refusals"]


@pytest.fixture(scope="module")
def crepe():
    backend = create_backend("onnx", "crepe-tiny")
    yield backend
    backend.close()


def inner_softmax(backend, x):
    logits = torch.as_tensor(backend.query(x).scores, dtype=torch.float64)
    return torch.softmax(logits, dim=1).numpy()                          # (B, C)


def test_topk_is_the_k_best_labels_of_the_inner_softmax_with_their_probabilities(crepe):
    x = _valid_batch(crepe, 4, seed=3)
    p = inner_softmax(crepe, x)
    answer = DegradedBackend(crepe, "topk", k=5).query(x)
    assert answer.kind == "topk" and answer.labels.shape == answer.scores.shape == (4, 5)
    assert np.array_equal(answer.labels, np.argsort(-p, axis=1, kind="stable")[:, :5])
    assert np.allclose(answer.scores, np.take_along_axis(p, answer.labels, axis=1), rtol=1e-5, atol=1e-7)
    assert (np.diff(answer.scores, axis=1) <= 0).all()


def test_label_is_the_inner_argmax(crepe):
    x = _valid_batch(crepe, 4, seed=4)
    answer = DegradedBackend(crepe, "label").query(x)
    assert answer.kind == "label" and answer.labels.shape == (4, 1) and answer.scores is None
    assert np.array_equal(answer.labels[:, 0], crepe.query(x).scores.argmax(axis=1))
    # topk → label keeps the best of the top k
    two_step = DegradedBackend(DegradedBackend(crepe, "topk", k=3), "label").query(x)
    assert np.array_equal(two_step.labels, answer.labels)


@pytest.mark.parametrize("kind, k", [("topk", 5), ("label", 5), ("topk", 1)])
def test_degraded_crepe_passes_conformance(crepe, kind, k):
    assert check_backend(DegradedBackend(crepe, kind, k)) == CHECKS


def test_degraded_backend_declares_what_it_wraps(crepe):
    top5 = DegradedBackend(crepe, "topk")
    assert (top5.input_spec, top5.num_classes, top5.max_batch) == (crepe.input_spec, 360, crepe.max_batch)
    assert top5.model_id == crepe.model_id + ":topk5" and top5.name == "onnx+topk"
    label = DegradedBackend(crepe, "label")
    assert label.model_id == crepe.model_id + ":label" and label.name == "onnx+label"
    described = json.loads(json.dumps(top5.describe()))
    assert described["output_kind"] == "topk" and described["model_id"] == crepe.model_id + ":topk5"
    assert described["degraded"] == {"from": "logits", "to": "topk", "k": 5, "inner_model_id": crepe.model_id}
    assert top5.calls_for(crepe.max_batch + 1) == crepe.calls_for(crepe.max_batch + 1) == 2


def test_degraded_capabilities_are_the_inner_ones_without_gradients(crepe):
    """A remote inner stays remote, probed, concurrent and idempotent; a degraded answer has no
    gradient, so the white-box path refuses it."""
    assert DegradedBackend(crepe, "topk").capabilities == crepe.capabilities
    inner = CallableBackend(lambda x: x, input_shape=(4,), num_classes=4)
    inner.capabilities = Capabilities(remote=True, probe_examples=1, concurrency=3, honours_idempotency=True,
                                      differentiable=True)
    assert DegradedBackend(inner, "label").capabilities == Capabilities(
        remote=True, probe_examples=1, concurrency=3, honours_idempotency=True, differentiable=False)
    x = np.zeros((crepe.max_batch + 1, *crepe.input_spec.shape), np.float32)
    assert [len(c) for c in DegradedBackend(crepe, "label").split(x)] == [len(c) for c in crepe.split(x)]


def test_probs_backend_keeps_its_probabilities_and_close_reaches_the_inner_backend():
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.4, 0.3, 0.2, 0.1]], np.float32)
    inner = CallableBackend(lambda x: probs[: len(x)], input_shape=(2,), num_classes=4,
                            output_kind="probs", max_batch=1, model_id="table")
    closed = []
    inner.close = lambda: closed.append(True)
    top2 = DegradedBackend(inner, "topk", k=2)
    answer = top2.query(np.zeros((1, 2), np.float32))
    assert answer.labels.tolist() == [[1, 3]] and np.allclose(answer.scores, [[0.5, 0.25]])
    assert top2.calls_for(3) == 3
    top2.close()
    assert closed == [True]


@pytest.mark.parametrize("inner_kind, kind, k, message", [
    ("logits", "logits", 5, "expected a degraded output kind probs, topk or label, got 'logits'"),
    ("topk", "probs", 5, "expected a logits backend to degrade to probs, got a topk backend"),
    ("logits", "top5", 5, "expected a degraded output kind probs, topk or label, got 'top5'"),
    ("logits", "topk", 0, r"expected k in \[1, 4\], got 0"),
    ("logits", "topk", 5, r"expected k in \[1, 4\], got 5"),
    ("label", "topk", 2, "expected a logits or probs backend to degrade to topk, got a label backend"),
    ("topk", "topk", 2, "expected a logits or probs backend to degrade to topk, got a topk backend"),
    ("label", "label", 1, "expected a logits, probs or topk backend to degrade to label, got a label backend"),
])
def test_impossible_degradations_are_refused(inner_kind, kind, k, message):
    inner = CallableBackend(lambda x: np.zeros((len(x), 4)), input_shape=(2,), num_classes=4,
                            output_kind="label" if inner_kind == "label" else "logits")
    if inner_kind == "topk":
        inner = DegradedBackend(inner, "topk", k=3)
    with pytest.raises(ValueError, match=f"^{message}$"):
        DegradedBackend(inner, kind, k)


def test_probs_are_the_softmax_of_the_logits(crepe):
    x = np.random.default_rng(5).normal(size=(3, 1024)).astype(np.float32)
    logits = crepe.query(x).scores.astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probs = DegradedBackend(crepe, "probs")
    answer = probs.query(x)
    assert answer.kind == "probs" and np.allclose(answer.scores, expected, atol=1e-6)
    assert probs.model_id.endswith(":probs")
    check_backend(probs)


def test_degrade_leaves_a_backend_alone_when_nothing_changes(crepe):
    assert degrade(crepe, "") is crepe and degrade(crepe, "logits") is crepe
    top3 = degrade(crepe, "topk", k=3)
    assert isinstance(top3, DegradedBackend) and top3.k == 3
    assert degrade(top3, "topk") is top3
    assert degrade(top3, "label").output_kind == "label"
