"""The Backend interface: the only thing in the toolkit that talks to a model.

A backend declares what it accepts (``InputSpec``) and what it answers (``OutputKind``),
and answers a batch of inputs with a ``Prediction``. Everything else in the toolkit
(ledger, label maps, losses, trainer) works from those three things alone, and from what the
backend can do beyond answering (``Capabilities``), declared in one frozen value.

Three bases, one for each way of answering a call: ``Backend`` (override ``_predict``, one call
of a local model), ``RemoteBackend`` (override ``_request``, one call of a paid service; the base
chunks, sends concurrently and passes idempotency keys) and ``DifferentiableBackend`` (also
``forward_tensor``, the gradients of the white-box path).
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np

from ..errors import Refusal

if TYPE_CHECKING:                     # torch is the torch plugin's; core never imports it here
    import torch

OutputKind = Literal["logits", "probs", "topk", "label"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probs", "topk", "label")


class InputError(Refusal):
    """An input batch does not match the backend's input spec (nothing was sent)."""


class BackendUnavailable(RuntimeError):
    """The model stopped answering (e.g. a remote endpoint's circuit breaker opened). A run
    stops with a checkpoint and the CLI exits with code 3, so a scheduler can retry later."""


@dataclass(frozen=True)
class InputSpec:
    """What a backend accepts: one example's shape, its dtype and its value range."""

    shape: tuple[int, ...]                      # one example, without the batch axis
    dtype: str = "float32"
    value_range: tuple[float, float] = (-math.inf, math.inf)

    def check(self, x: np.ndarray) -> None:
        """Raise InputError with one sentence when ``x`` is not a batch of this spec."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"expected a numpy array, got {type(x).__name__}")
        if x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != tuple(self.shape):
            raise InputError(
                f"expected a batch of shape (B, {', '.join(map(str, self.shape))}), "
                f"got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InputError("expected a batch of at least one example, got an empty batch")
        if str(x.dtype) != self.dtype:
            raise InputError(f"expected dtype {self.dtype}, got {x.dtype}")
        if not np.isfinite(x).all():
            raise InputError("expected finite input values, got NaN or infinity")
        low, high = self.value_range
        if x.min() < low or x.max() > high:
            raise InputError(
                f"expected values in [{low}, {high}], got [{x.min():.4g}, {x.max():.4g}]")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond answering queries, in one frozen value that the toolkit
    reads (it never looks for optional attributes). A class declares its own as a class
    attribute, ``capabilities = Capabilities(remote=True, probe_examples=1)``; an instance whose
    options change one sets ``self.capabilities = dataclasses.replace(self.capabilities, ...)``.
    The defaults describe a local model: free, one call at a time, no gradients."""

    #: answers cost money and may fail in flight: runs journal them by default (train.journal = "auto")
    remote: bool = False
    #: examples of a first paid call that checks the whole answer contract before the bulk of the
    #: budget is spent (booked as ``probe``); 0: no probe
    probe_examples: int = 0
    #: calls the journal may have in flight at once (then ``query`` must be thread-safe)
    concurrency: int = 1
    #: the service bills a call resent under the same ``key`` once, so a resume does not book the
    #: calls a killed process left in flight
    honours_idempotency: bool = False
    #: a ``DifferentiableBackend``: ``forward_tensor`` gives gradients (train.method = "whitebox")
    differentiable: bool = False
    #: serves the zoo's models by name (``model = "crepe-tiny"``). A white-box run of a zoo model
    #: configured through a backend without gradients is served by an installed backend that
    #: declares both this and ``differentiable`` (``registry.zoo_backend_with_gradients``)
    zoo_models: bool = False
    #: the class's models are ONNX graphs that ``bbreprog export`` may copy into one file (read
    #: with the class's ``onnx_graph(model)``); a run of any other backend is exported around the call
    exports_graph: bool = False

    def __post_init__(self):
        if not (isinstance(self.concurrency, int) and self.concurrency >= 1):
            raise Refusal(f"expected capabilities.concurrency of at least 1, got {self.concurrency!r}")
        if not (isinstance(self.probe_examples, int) and self.probe_examples >= 0):
            raise Refusal(f"expected capabilities.probe_examples of at least 0, got {self.probe_examples!r}")


#: attributes that were read one by one before ``Capabilities``: a class that still sets one
#: would be silently ignored (a paid API not journaled), so it is refused when it is defined
_BEFORE_CAPABILITIES = ("remote", "probe_examples", "concurrency", "honours_idempotency")


@dataclass(frozen=True)
class Prediction:
    """A backend's answer to a batch of B examples.

    - ``logits`` / ``probs``: ``scores`` is (B, C); ``labels`` is None.
    - ``topk``: ``labels`` (B, k) int64 best first, ``scores`` (B, k) their scores.
    - ``label``: ``labels`` (B, 1) int64 (top-1 only), ``scores`` None.
    """

    kind: str
    num_classes: int
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores if self.scores is not None else self.labels)

    def top1(self) -> np.ndarray:
        """(B,) the best class of each example, whatever the output kind."""
        if self.kind in ("logits", "probs"):
            return self.scores.argmax(axis=1)
        return self.labels[:, 0]

    def take(self, index: np.ndarray | slice) -> "Prediction":
        """The answers for a subset of the batch."""
        return Prediction(
            kind=self.kind, num_classes=self.num_classes,
            scores=None if self.scores is None else self.scores[index],
            labels=None if self.labels is None else self.labels[index])

    @staticmethod
    def concat(parts: Sequence["Prediction"]) -> "Prediction":
        first = parts[0]
        return Prediction(
            kind=first.kind, num_classes=first.num_classes,
            scores=None if first.scores is None else np.concatenate([p.scores for p in parts]),
            labels=None if first.labels is None else np.concatenate([p.labels for p in parts]))


def local_max_batch(input_shape: Sequence[int], device: str = "cpu") -> int:
    """Examples per call for a local model whose user names no ``max_batch``. On a CPU small calls
    are both faster and lighter: EfficientNet-Lite0 at 224 px answered 85 images/s in calls of 6
    against 59/s in calls of 256, and a training step peaked at 1.1 against 9.0 GB
    (benchmarks/results/overhead.md). So a call carries about a million input values (6 such
    images; 256 CREPE-tiny frames, where the speed is flat). A GPU wants large calls."""
    if device == "cuda":
        return 256
    return max(1, min(256, 2 ** 20 // math.prod(input_shape)))


def checked_max_batch(max_batch: int | None, input_shape: Sequence[int], device: str = "cpu") -> int:
    """The user's ``max_batch`` (refused below 1), or ``local_max_batch`` when none is named."""
    if max_batch is None:
        return local_max_batch(input_shape, device)
    if int(max_batch) < 1:
        raise Refusal(f"expected max_batch of at least 1, got {max_batch}")
    return int(max_batch)


class Backend:
    """A model that can be queried. Subclasses set the attributes and implement ``_predict``.

    ``query`` checks the batch against the spec before anything is sent, splits it into
    calls of at most ``max_batch`` examples (``split``), and checks every answer
    (``check_answer``).
    """

    name: str = "backend"
    input_spec: InputSpec
    output_kind: str
    num_classes: int
    max_batch: int = 256
    #: identifies the model for answer caching (e.g. a file checksum or an endpoint URL)
    model_id: str = ""
    #: what the backend can do beyond answering (a local model's defaults: see ``Capabilities``)
    capabilities: Capabilities = Capabilities()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        stale = [name for name in _BEFORE_CAPABILITIES if name in vars(cls)]
        if stale:
            raise TypeError(f"expected {cls.__name__} to declare {', '.join(stale)} in its capabilities "
                            f"(capabilities = Capabilities({stale[0]}=...)), got class attributes")

    def _predict(self, x: np.ndarray) -> Prediction:          # (b, *shape) -> Prediction
        raise NotImplementedError

    def query(self, x: np.ndarray, on_send: Callable[[int], None] | None = None,
              key: str | None = None) -> Prediction:
        """Answers for a batch, in calls of at most ``max_batch``; ``on_send(n)`` is told just
        before each call goes out, so a failure part-way leaves the earlier calls counted.
        ``key`` names a single call for APIs that honour idempotency keys (local models ignore it)."""
        self.input_spec.check(x)
        parts = []
        for chunk in self.split(x):
            if on_send:
                on_send(len(chunk))
            parts.append(self.check_answer(self._predict(chunk), len(chunk)))
        return Prediction.concat(parts)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        """The calls ``query`` sends a batch in, in order: consecutive chunks of at most
        ``max_batch`` examples (the journal keys and buys them one by one)."""
        return [x[i:i + self.max_batch] for i in range(0, len(x), self.max_batch)]

    def calls_for(self, batch_size: int) -> int:
        """How many calls a batch of this size is split into."""
        return -(-batch_size // self.max_batch)

    def check_answer(self, p: Prediction, batch_size: int) -> Prediction:
        """``p`` when it is an answer of this backend to a call of ``batch_size`` examples (its
        kind, one answer per example, its class count, finite scores, labels that are classes);
        RuntimeError otherwise. ``query`` checks every call with it, the journal every answer it
        reads back."""
        if p.kind != self.output_kind:
            raise RuntimeError(f"{self.name}: expected {self.output_kind} outputs, got {p.kind}")
        if len(p) != batch_size:
            raise RuntimeError(f"{self.name}: expected {batch_size} answers, got {len(p)}")
        if p.num_classes != self.num_classes:
            raise RuntimeError(f"{self.name}: expected {self.num_classes} classes, got {p.num_classes}")
        if p.scores is not None and not np.isfinite(p.scores).all():
            raise RuntimeError(f"{self.name}: expected finite scores, got NaN or infinity")
        if p.labels is not None and (p.labels.dtype.kind not in "iu" or p.labels.min() < 0
                                     or p.labels.max() >= self.num_classes):
            raise RuntimeError(f"{self.name}: expected integer labels in [0, {self.num_classes}), got "
                               f"{p.labels.dtype} values in [{p.labels.min()}, {p.labels.max()}]")
        return p

    @classmethod
    def from_config(cls, model: str, **options) -> "Backend":
        """Build from a config's ``backend.model`` and ``backend.options``."""
        return cls(model, **options)

    def close(self) -> None:
        """Release sessions, connections, threads."""

    @classmethod
    def onnx_graph(cls, model: str):
        """For a class that declares ``exports_graph``: the model a config names (``model``), as a
        vetted ``onnx.ModelProto`` that ``bbreprog export`` copies whole into one file."""
        raise NotImplementedError(f"{cls.__name__} does not declare its models ONNX graphs to export")

    def describe(self) -> dict:
        return {"backend": self.name, "model_id": self.model_id, "output_kind": self.output_kind,
                "num_classes": self.num_classes, "input_shape": list(self.input_spec.shape),
                "value_range": list(self.input_spec.value_range)}


class RemoteBackend(Backend):
    """A paid service over a network: the base of a backend whose calls cost money and may fail
    in flight (the http plugin's). It owns what every such backend does alike: ``query`` checks
    the batch before anything leaves, splits it as ``split`` does, sends the calls
    ``capabilities.concurrency`` at a time and waits for every one (so each attempt is booked
    even when one fails), and passes ``key`` (the journal's name for one call) with its call.

    A subclass implements ``_request(chunk, on_send, key)``, one call: tell ``on_send(len(chunk))``
    before each attempt leaves (``retry=True`` for a resend: the ledger may refuse it by
    raising), send ``key``, when given, as the service's idempotency key on every attempt, and
    return the answer checked with ``check_answer``. Declared remote, with a probe of one example.
    """

    capabilities = Capabilities(remote=True, probe_examples=1)
    _pool: ThreadPoolExecutor | None = None       # started with the first query

    def _request(self, chunk: np.ndarray, on_send: Callable[..., None] | None, key: str | None) -> Prediction:
        raise NotImplementedError

    def query(self, x: np.ndarray, on_send: Callable[..., None] | None = None,
              key: str | None = None) -> Prediction:
        """Answers for a batch: calls of at most ``max_batch`` examples, ``concurrency`` in flight."""
        self.input_spec.check(x)
        if key is not None and len(x) > self.max_batch:
            raise Refusal(f"expected at most {self.max_batch} examples under one idempotency key, got {len(x)}")
        pool = self._senders()
        futures = [pool.submit(self._request, chunk, on_send, key) for chunk in self.split(x)]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return Prediction.concat([f.result() for f in futures])

    def _senders(self) -> ThreadPoolExecutor:
        """The threads calls are sent from (``concurrency`` of them), started with the first query."""
        with _SENDERS_LOCK:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.capabilities.concurrency,
                                                thread_name_prefix=f"bbreprog-{self.name}")
            return self._pool

    def close(self) -> None:
        with _SENDERS_LOCK:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


_SENDERS_LOCK = threading.Lock()


class DifferentiableBackend(Backend):
    """A backend that also gives gradients: ``forward_tensor`` is what the white-box path
    (train.method = "whitebox") trains through. Declared ``differentiable``."""

    capabilities = Capabilities(differentiable=True)

    def forward_tensor(self, x: "torch.Tensor") -> "torch.Tensor":
        """(B, *input_shape) → (B, C) scores of the declared output kind, differentiable with
        respect to ``x`` (the model's own parameters frozen)."""
        raise NotImplementedError


class CallableBackend(Backend):
    """Wraps a plain Python function ``f(x: ndarray[B, *shape]) -> ndarray[B, C]``.

    The ten-line way to plug in any model::

        backend = CallableBackend(my_model_fn, input_shape=(1024,), num_classes=360,
                                  output_kind="logits")
    """

    name = "callable"

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], *, input_shape: Sequence[int],
                 num_classes: int, output_kind: str = "logits", dtype: str = "float32",
                 value_range: tuple[float, float] = (-math.inf, math.inf),
                 max_batch: int = 256, model_id: str = ""):
        if output_kind not in ("logits", "probs", "label"):
            raise Refusal(f"expected output_kind logits, probs or label, got {output_kind!r}")
        self.fn = fn
        self.input_spec = InputSpec(tuple(int(s) for s in input_shape), dtype, tuple(value_range))
        self.num_classes = int(num_classes)
        self.output_kind = output_kind
        self.max_batch = int(max_batch)
        self.model_id = model_id or f"callable:{getattr(fn, '__qualname__', repr(fn))}"

    @classmethod
    def from_config(cls, model: str, **options) -> "CallableBackend":
        """``model`` is "package.module:function"; options give the spec."""
        module_name, sep, attribute = model.partition(":")
        if not sep:
            raise Refusal(f"expected a callable as 'module:function', got {model!r}")
        if os.getcwd() not in sys.path:      # like `python -m`, find modules in the working folder
            sys.path.append(os.getcwd())
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise Refusal(f"expected an importable callable {model!r}, got {type(error).__name__}: {error}") from None
        missing = {"input_shape", "num_classes"} - set(options)
        if missing:
            raise Refusal(f"expected backend.options {sorted(missing)} for a callable backend, got {sorted(options)}")
        return cls(function, **options)

    def _predict(self, x: np.ndarray) -> Prediction:
        out = np.asarray(self.fn(x))
        if self.output_kind == "label":
            return Prediction("label", self.num_classes, labels=out.reshape(len(x), 1).astype(np.int64))
        if out.shape != (len(x), self.num_classes):
            raise RuntimeError(
                f"callable: expected outputs of shape ({len(x)}, {self.num_classes}), got {out.shape}")
        return Prediction(self.output_kind, self.num_classes, scores=out.astype(np.float32))
