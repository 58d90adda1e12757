"""The conformance kit a backend author runs: ``check_backend(backend)``.

Small named checks, each asserting one promise the rest of the toolkit relies on. It spends a
handful of queries (a few batches of up to 3 examples). Raises ``AssertionError`` naming the
failed check; returns the names of the checks that passed.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .base import OUTPUT_KINDS, Backend, Capabilities, DifferentiableBackend, InputError, Prediction


def _valid_batch(backend: Backend, size: int, seed: int = 0) -> np.ndarray:
    spec = backend.input_spec
    low, high = spec.value_range
    low = low if math.isfinite(low) else -1.0
    high = high if math.isfinite(high) else 1.0
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(size, *spec.shape)).astype(spec.dtype)


class _CountingCalls:
    """Counts calls to ``_predict`` so a refusal can be shown to have sent nothing."""

    def __init__(self, backend: Backend):
        self.backend, self.calls = backend, 0
        self.original = backend._predict

    def __enter__(self):
        def counted(x):
            self.calls += 1
            return self.original(x)
        self.backend._predict = counted
        return self

    def __exit__(self, *exc):
        del self.backend._predict
        return False


def check_declarations(backend: Backend) -> None:
    assert backend.output_kind in OUTPUT_KINDS, f"output_kind must be one of {OUTPUT_KINDS}, got {backend.output_kind!r}"
    assert isinstance(backend.num_classes, int) and backend.num_classes >= 2, f"num_classes must be an int ≥ 2, got {backend.num_classes!r}"
    assert all(isinstance(d, int) and d > 0 for d in backend.input_spec.shape), f"input shape must be positive ints, got {backend.input_spec.shape}"
    assert backend.max_batch >= 1, f"max_batch must be ≥ 1, got {backend.max_batch}"
    assert backend.model_id, "model_id must identify the model (used to cache answers)"
    capabilities = backend.capabilities
    assert isinstance(capabilities, Capabilities), f"capabilities must be a Capabilities, got {type(capabilities).__name__}"
    assert not capabilities.differentiable or isinstance(backend, DifferentiableBackend), (
        "a backend declaring differentiable must be a DifferentiableBackend (forward_tensor)")
    json.dumps(backend.describe())


def check_answers(backend: Backend) -> None:
    x = _valid_batch(backend, 3)
    told: list[int] = []
    p = backend.query(x, on_send=lambda n, **kind: told.append(n))
    # the ledger books every query through on_send, before its call leaves: a backend that does
    # not tell it spends queries no budget sees, and the refusal check below would be blind to it
    assert sum(told) == 3, f"query must tell on_send(n) of every example before its call leaves, was told of {sum(told)} of 3"
    assert isinstance(p, Prediction), f"query must return a Prediction, got {type(p).__name__}"
    assert p.kind == backend.output_kind, f"answers must be of the declared kind {backend.output_kind}, got {p.kind}"
    assert len(p) == 3, f"a batch of 3 must get 3 answers, got {len(p)}"
    assert p.num_classes == backend.num_classes, f"answers must have {backend.num_classes} classes, got {p.num_classes}"
    if p.kind in ("logits", "probs"):
        assert p.scores.shape == (3, backend.num_classes), f"scores must be (B, C), got {p.scores.shape}"
        assert np.isfinite(p.scores).all(), "scores must be finite"
    if p.kind == "probs":
        assert (p.scores >= -1e-6).all() and np.allclose(p.scores.sum(axis=1), 1, atol=1e-3), "probs rows must be distributions"
    if p.kind in ("topk", "label"):
        assert p.labels.dtype.kind == "i" and ((0 <= p.labels) & (p.labels < backend.num_classes)).all(), "labels must be class indices"
    if p.kind == "topk":
        assert p.scores.shape == p.labels.shape, "topk scores and labels must have the same shape"
        assert (np.diff(p.scores, axis=1) <= 1e-6).all(), "topk scores must be sorted, best first"


def check_deterministic(backend: Backend) -> None:
    x = _valid_batch(backend, 2, seed=1)
    a, b = backend.query(x), backend.query(x)
    assert np.array_equal(a.top1(), b.top1()), "the same input must get the same top-1 answer"
    if a.scores is not None:
        assert np.allclose(a.scores, b.scores, atol=1e-5), "the same input must get the same scores"


def check_batch_independence(backend: Backend) -> None:
    """An example's answer must not depend on the rest of its batch (or on batch splitting)."""
    x = _valid_batch(backend, 3, seed=2)
    together = backend.query(x)
    alone = Prediction.concat([backend.query(x[i:i + 1]) for i in range(3)])
    assert np.array_equal(together.top1(), alone.top1()), "answers must not depend on the batch"
    if together.scores is not None:
        assert np.allclose(together.scores, alone.scores, atol=1e-4), "scores must not depend on the batch"


def check_refusals(backend: Backend) -> None:
    """Bad batches are refused with InputError before anything is sent: neither ``_predict``
    nor any call of an overridden ``query`` (which tells ``on_send`` as it leaves) goes out."""
    spec = backend.input_spec
    good = _valid_batch(backend, 2)
    bad = {"wrong shape": good.reshape(2, -1)[:, :-1] if good[0].size > 1 else good[:, None],
           "wrong dtype": good.astype(np.float64 if spec.dtype != "float64" else np.float32),
           "NaN": np.where(np.arange(good.size).reshape(good.shape) == 0, np.nan, good).astype(spec.dtype),
           "empty batch": good[:0]}
    if math.isfinite(spec.value_range[1]):
        bad["out of range"] = (good + 2 * (spec.value_range[1] - spec.value_range[0]) + 1).astype(spec.dtype)
    told: list[int] = []
    with _CountingCalls(backend) as counter:
        for case, x in bad.items():
            try:
                backend.query(x, on_send=lambda n, **kind: told.append(n))
            except InputError:
                continue
            except Exception as error:
                raise AssertionError(f"a batch with {case} must be refused with InputError, got {type(error).__name__}") from None
            else:
                raise AssertionError(f"a batch with {case} must be refused with InputError")
        assert counter.calls == 0 and not told, (f"refused batches must send nothing, {counter.calls + len(told)} "
                                                  "calls went out")


CHECKS = (check_declarations, check_answers, check_deterministic, check_batch_independence, check_refusals)


def check_backend(backend: Backend) -> list[str]:
    passed = []
    for check in CHECKS:
        try:
            check(backend)
        except AssertionError as error:
            raise AssertionError(f"{check.__name__} failed for {backend.name}: {error}") from None
        passed.append(check.__name__)
    return passed
