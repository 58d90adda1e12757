"""Degrade a backend's answers to what a stingier API would give: top-k or label only.

A model served locally with full logits can stand in for a commercial API that answers only
its k best labels (with their probabilities) or only its best label. Wrapping it lets the same
model be reprogrammed under each output kind, so the cost of losing information is measured
on one model rather than confounded with a change of model::

    api = degrade(create_backend("onnx", "crepe-tiny"), "topk", k=5)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .base import Backend, Prediction
from ..errors import Refusal

DEGRADED_KINDS = ("probs", "topk", "label")


class DegradedBackend(Backend):
    """Answers ``probs`` (softmax of logits, as most APIs answer), ``topk`` (the k best labels,
    best first, with their probabilities) or ``label`` (the best label only) from an inner
    backend that answers more.

    Allowed: logits → probs; logits or probs → topk or label; topk → label. The inner backend is queried
    exactly as often as it would be alone (same max_batch), and its answers are checked by
    its own ``query`` before they are degraded. ``k`` is read only for ``topk``.
    """

    def __init__(self, inner: Backend, kind: str, k: int = 5):
        if kind not in DEGRADED_KINDS:
            raise Refusal(f"expected a degraded output kind probs, topk or label, got {kind!r}")
        allowed = {"probs": ("logits",), "topk": ("logits", "probs"), "label": ("logits", "probs", "topk")}[kind]
        if inner.output_kind not in allowed:
            expected = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            raise Refusal(f"expected a {expected} backend to degrade to {kind}, got a {inner.output_kind} backend")
        if kind == "topk" and not 1 <= k <= inner.num_classes:
            raise Refusal(f"expected k in [1, {inner.num_classes}], got {k}")
        self.inner, self.k = inner, int(k) if kind == "topk" else 1
        self.output_kind = kind
        self.input_spec = inner.input_spec
        self.num_classes = inner.num_classes
        self.max_batch = inner.max_batch
        # a remote inner stays remote (probed, journaled, several requests in flight); the
        # degraded answers have no gradient
        self.capabilities = dataclasses.replace(inner.capabilities, differentiable=False)
        self.name = f"{inner.name}+{kind}"
        # a different answer for the same input: the cache must not mix the two
        self.model_id = f"{inner.model_id}:{'topk' + str(self.k) if kind == 'topk' else kind}"

    def query(self, x: np.ndarray, on_send=None, key: str | None = None) -> Prediction:
        """The inner backend's ``query``, degraded: it checks the batch, splits it, books its own
        calls (and retries) through ``on_send`` and checks its answers, however it sends them (a
        remote inner's own concurrency and keys). So this wrapper overrides ``query``, not
        ``_predict``, which a remote inner does not have."""
        return self._degrade(self.inner.query(x, on_send=on_send, key=key))

    def _degrade(self, full: Prediction) -> Prediction:
        if full.kind == "topk":                                    # topk → label: keep the best
            return Prediction("label", self.num_classes, labels=full.labels[:, :1].copy())
        scores = full.scores.astype(np.float64)                    # (b, C)
        if full.kind == "logits":                                  # APIs answer probabilities
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        if self.output_kind == "probs":
            return Prediction("probs", self.num_classes, scores=scores.astype(np.float32))
        # stable sort of −p: ties keep the lower class first, as argmax does
        best = np.argsort(-scores, axis=1, kind="stable")[:, :self.k].astype(np.int64)  # (b, k)
        if self.output_kind == "label":
            return Prediction("label", self.num_classes, labels=best)
        top = np.take_along_axis(scores, best, axis=1).astype(np.float32)               # (b, k)
        return Prediction("topk", self.num_classes, scores=top, labels=best)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        return self.inner.split(x)

    def calls_for(self, batch_size: int) -> int:
        return self.inner.calls_for(batch_size)

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        out = self.inner.describe()
        out.update(super().describe())                             # this wrapper's name, id, kind
        out["degraded"] = {"from": self.inner.output_kind, "to": self.output_kind,
                           "k": self.k, "inner_model_id": self.inner.model_id}
        return out


def degrade(backend: Backend, kind: str, k: int = 5) -> Backend:
    """``backend`` answering only ``kind`` ("topk" with ``k`` labels, or "label"); unchanged
    when ``kind`` is "" or already the backend's kind (a topk backend stays as it is, whatever
    its k)."""
    if not kind or kind == backend.output_kind:
        return backend
    return DegradedBackend(backend, kind, k)
