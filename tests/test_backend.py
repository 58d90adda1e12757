import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from blackbox_reprog.backends.base import (Capabilities, CallableBackend, InputError, InputSpec, Prediction,
                                     RemoteBackend)
from blackbox_reprog.errors import Refusal
from blackbox_reprog.backends.registry import (UnknownBackend, create_backend, declared, installed,
                                      zoo_backend_with_gradients)
from blackbox_reprog.backends.testing import check_backend
from tests.models import CALLS, reset_calls, signal_model


def make_callable(**kw):
    return CallableBackend(signal_model, input_shape=(1024,), num_classes=32, **kw)


@pytest.mark.parametrize("x, message", [
    (np.zeros((2, 1023), np.float32), r"expected a batch of shape \(B, 1024\), got \(2, 1023\)"),
    (np.zeros((2, 1024), np.float64), "expected dtype float32, got float64"),
    (np.zeros((0, 1024), np.float32), "expected a batch of at least one example"),
    (np.full((2, 1024), np.nan, np.float32), "expected finite input values"),
    (np.full((2, 1024), 5, np.float32), r"expected values in \[-1.0, 1.0\], got \[5, 5\]"),
    ([[0.0] * 1024], "expected a numpy array, got list"),
])
def test_input_spec_refuses_with_one_sentence(x, message):
    with pytest.raises(InputError, match=message):
        InputSpec((1024,), "float32", (-1.0, 1.0)).check(x)


def test_query_splits_batches_and_refuses_before_sending():
    backend = make_callable(max_batch=4)
    reset_calls()
    p = backend.query(np.random.default_rng(0).normal(size=(10, 1024)).astype(np.float32))
    assert CALLS == {"count": 3, "examples": 10}
    assert backend.calls_for(10) == 3 and p.scores.shape == (10, 32)
    with pytest.raises(InputError):
        backend.query(np.zeros((3, 1024), np.float64))
    assert CALLS["count"] == 3


def test_prediction_top1_for_every_kind():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    assert Prediction("probs", 3, scores=scores).top1().tolist() == [1, 0]
    topk = Prediction("topk", 3, scores=np.array([[0.7, 0.2]]), labels=np.array([[1, 2]]))
    assert topk.top1().tolist() == [1]
    both = Prediction.concat([topk, topk.take(slice(0, 1))])
    assert both.labels.shape == (2, 2)


def test_callable_backend_checks_output_shape():
    backend = CallableBackend(lambda x: np.zeros((len(x), 5)), input_shape=(3,), num_classes=4)
    with pytest.raises(RuntimeError, match=r"expected outputs of shape \(2, 4\), got \(2, 5\)"):
        backend.query(np.zeros((2, 3), np.float32))


def test_registry_lists_shipped_backends_and_names_unknown_ones():
    assert {"onnx", "callable"} <= set(installed())
    with pytest.raises(UnknownBackend, match="unknown backend 'onxx'; did you mean 'onnx'\\? installed: callable, http, onnx"):
        create_backend("onxx", "crepe-tiny")


def test_callable_from_config_imports_module_function():
    backend = create_backend("callable", "tests.models:signal_model", input_shape=[1024], num_classes=32)
    assert backend.query(np.ones((1, 1024), np.float32)).scores.shape == (1, 32)


@pytest.mark.parametrize("model", ["crepe-tiny", "efficientnet-lite0", "efficientnet-lite0-128"])
def test_onnx_zoo_backends_pass_conformance(model):
    backend = create_backend("onnx", model)
    assert check_backend(backend) == ["check_declarations", "check_answers", "check_deterministic",
                                      "check_batch_independence", "check_refusals"]


def test_callable_backend_passes_conformance():
    check_backend(make_callable(value_range=(-10.0, 10.0)))


def test_conformance_kit_catches_a_batch_dependent_model():
    # normalising over the batch makes answers depend on the other examples
    bad = CallableBackend(lambda x: (x - x.mean(axis=0)) @ np.eye(8, 4, dtype=np.float32),
                          input_shape=(8,), num_classes=4)
    with pytest.raises(AssertionError, match="check_batch_independence failed"):
        check_backend(bad)


def test_conformance_kit_catches_a_backend_that_sends_bad_batches():
    class Careless(CallableBackend):
        def query(self, x, on_send=None, key=None):      # skips the spec check
            if on_send:
                on_send(len(x))
            return self._predict(x)
    with pytest.raises(AssertionError, match="check_refusals failed"):
        check_backend(Careless(signal_model, input_shape=(1024,), num_classes=32))


class SendsThenRefuses(CallableBackend):
    """Overrides ``query``: every batch reaches the model (not through ``_predict``), and only
    then is a bad one refused with InputError — the refusal comes after the money is spent."""

    def __init__(self, *args, tell: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.tell, self.reached_model = tell, 0

    def query(self, x, on_send=None, key=None):
        if on_send and self.tell:
            on_send(len(x))
        self.reached_model += 1
        try:
            scores = self.fn(np.asarray(x, dtype=np.float32))
        except Exception:                                 # a batch of the wrong shape: sent all the same
            scores = None
        self.input_spec.check(x)
        return self.check_answer(Prediction("logits", self.num_classes, scores=scores.astype(np.float32)), len(x))


@pytest.mark.parametrize("tell", [True, False], ids=["telling on_send", "telling nobody"])
def test_conformance_kit_catches_a_backend_that_overrides_query_and_refuses_after_sending(tell):
    backend = SendsThenRefuses(signal_model, input_shape=(1024,), num_classes=32, tell=tell)
    with pytest.raises(AssertionError, match="check_refusals failed" if tell else "check_answers failed.*on_send"):
        check_backend(backend)


@pytest.mark.parametrize("model, options, message", [
    ("tests.models:nothing_here", {"input_shape": [4], "num_classes": 2}, "expected an importable callable 'tests.models:nothing_here', got AttributeError"),
    ("no_such_module:f", {"input_shape": [4], "num_classes": 2}, "expected an importable callable 'no_such_module:f', got ModuleNotFoundError"),
    ("tests.models", {}, "expected a callable as 'module:function', got 'tests.models'"),
    ("tests.models:signal_model", {"num_classes": 32}, r"expected backend.options \['input_shape'\] for a callable backend"),
])
def test_callable_config_errors_are_one_sentence(model, options, message):
    with pytest.raises(ValueError, match=message):
        create_backend("callable", model, **options)


def test_answers_with_impossible_labels_are_rejected():
    backend = CallableBackend(lambda x: np.full(len(x), 7), input_shape=(2,), num_classes=4, output_kind="label")
    with pytest.raises(RuntimeError, match=r"expected integer labels in \[0, 4\), got int64 values in \[7, 7\]"):
        backend.query(np.zeros((2, 2), np.float32))


# ---- the contract's public parts: capabilities, split, check_answer, the remote base -----------
def test_a_local_backend_declares_the_defaults():
    assert make_callable().capabilities == Capabilities(remote=False, probe_examples=0, concurrency=1,
                                                        honours_idempotency=False, differentiable=False)


def test_a_class_still_setting_capabilities_as_attributes_is_refused_when_defined():
    """Those attributes are no longer read: a paid API declaring ``remote = True`` would go
    unjournaled without a word, so the class is refused."""
    with pytest.raises(TypeError, match=r"expected Old to declare remote, concurrency in its capabilities "
                                        r"\(capabilities = Capabilities\(remote=...\)\), got class attributes"):
        class Old(CallableBackend):
            remote = True
            concurrency = 4


@pytest.mark.parametrize("field, value", [("concurrency", 0), ("probe_examples", -1), ("concurrency", 2.5)])
def test_impossible_capabilities_are_refused(field, value):
    with pytest.raises(Refusal, match=f"expected capabilities.{field} of at least"):
        Capabilities(**{field: value})


def test_split_gives_the_calls_query_sends():
    backend = make_callable(max_batch=4)
    x = np.random.default_rng(0).normal(size=(10, 1024)).astype(np.float32)
    chunks = backend.split(x)
    assert [len(c) for c in chunks] == [4, 4, 2] and np.array_equal(np.concatenate(chunks), x)
    told: list[int] = []
    backend.query(x, on_send=told.append)
    assert told == [4, 4, 2] and backend.calls_for(10) == len(chunks)


def test_check_answer_returns_a_fitting_answer_and_names_what_does_not_fit():
    backend = make_callable()
    fits = Prediction("logits", 32, scores=np.zeros((2, 32), np.float32))
    assert backend.check_answer(fits, 2) is fits
    with pytest.raises(RuntimeError, match="callable: expected 3 answers, got 2"):
        backend.check_answer(fits, 3)
    with pytest.raises(RuntimeError, match="callable: expected logits outputs, got probs"):
        backend.check_answer(Prediction("probs", 32, scores=np.full((2, 32), 1 / 32, np.float32)), 2)


class FakeService(RemoteBackend):
    """A paid service in a test: only the call of one chunk is written here."""

    name = "fake"
    output_kind = "logits"

    def __init__(self, *, max_batch: int = 4, concurrency: int = 2):
        self.input_spec, self.num_classes = InputSpec((1024,), "float32", (-10.0, 10.0)), 32
        self.max_batch, self.model_id = max_batch, "fake:signal"
        self.capabilities = dataclasses.replace(self.capabilities, concurrency=concurrency)
        self.calls: list[tuple[int, str | None, str]] = []
        self.lock = threading.Lock()

    def _request(self, chunk, on_send, key):
        if on_send:
            on_send(len(chunk))
        with self.lock:
            self.calls.append((len(chunk), key, threading.current_thread().name))
        return self.check_answer(Prediction("logits", 32, scores=signal_model(chunk).astype(np.float32)), len(chunk))


def test_a_remote_backend_writes_only_the_call_and_the_base_chunks_sends_and_passes_keys():
    service = FakeService()
    try:
        assert service.capabilities == Capabilities(remote=True, probe_examples=1, concurrency=2)
        check_backend(service)
        x = np.random.default_rng(0).uniform(-1, 1, size=(10, 1024)).astype(np.float32)
        told: list[int] = []
        service.calls.clear()
        answer = service.query(x, on_send=told.append)
        assert np.allclose(answer.scores, signal_model(x), atol=1e-6)            # in the order of x
        assert sorted(told) == [2, 4, 4] and sorted(n for n, _, _ in service.calls) == [2, 4, 4]
        assert all(thread.startswith("bbreprog-fake") for _, _, thread in service.calls)
        with pytest.raises(Refusal, match="expected at most 4 examples under one idempotency key, got 10"):
            service.query(x, key="k")
        service.query(x[:3], key="k")
        assert service.calls[-1][:2] == (3, "k") and len(service.calls) == 4
    finally:
        service.close()


def test_the_registry_finds_a_backend_with_gradients_for_a_zoo_model_from_declarations_alone():
    assert declared("torch").differentiable and declared("onnx").zoo_models and not declared("onnx").differentiable
    assert declared("no-such-backend") is None
    assert zoo_backend_with_gradients("onnx") == "torch"                 # the same network, with gradients
    for name in ("torch", "callable", "http", "no-such-backend"):
        assert zoo_backend_with_gradients(name) == name


ROOT = Path(__file__).resolve().parents[1]
