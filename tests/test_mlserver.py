"""The http backend against MLServer, a real third-party V2 server (tests/mlserver_support.py
starts it on 127.0.0.1 serving a scikit-learn model): the conformance kit passes, answers come
back unchanged, and a reprogramming run trains through it within its budget."""
from __future__ import annotations

import numpy as np
import pytest
from bbreprog_http import HttpBackend

from blackbox_reprog.run.config import load_config
from blackbox_reprog.backends.ledger import Ledger
from blackbox_reprog.run.runner import run
from blackbox_reprog.backends.testing import check_backend
from tests.mlserver_support import MODEL_NAME, MODEL_VERSION, VERSIONED_MODEL_NAME

DIGITS = {"protocol": "v2", "input_shape": [64], "num_classes": 10, "value_range": [0.0, 16.0]}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    x, _ = load_digits(return_X_y=True)
    return x[:40].astype(np.float32)                              # (40, 64) in [0, 16]


def probabilities(url: str, **options) -> HttpBackend:
    return HttpBackend.from_config(url, model_name=MODEL_NAME, output_kind="probs",
                                   request_outputs=["predict_proba"], max_batch=16, **DIGITS, **options)


def test_probabilities_pass_the_conformance_kit_and_equal_the_model(mlserver, digits):
    backend = probabilities(mlserver.base_url)
    try:
        check_backend(backend)
        book = Ledger(backend, budget=None)
        answer = book.query(digits, "train")                      # 3 requests of ≤ 16, FP64 answers
    finally:
        backend.close()
    expected = mlserver.model.predict_proba(digits.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(answer.scores, expected, atol=1e-6)
    assert book.summary()["train"] == {"queries": 40, "stored": 0, "retried": 0, "calls": 3,
                                       "seconds": book.summary()["train"]["seconds"]}


def test_labels_from_the_default_predict_output_equal_the_model(mlserver, digits):
    backend = HttpBackend.from_config(mlserver.base_url, model_name=MODEL_NAME, output_kind="label", **DIGITS)
    try:
        check_backend(backend)
        answer = backend.query(digits)                            # MLServer answers predict as (B, 1) INT64
    finally:
        backend.close()
    assert answer.labels[:, 0].tolist() == mlserver.model.predict(digits.astype(np.float64)).tolist()


def test_a_versioned_model_is_reached_through_its_versioned_path(mlserver, digits):
    backend = HttpBackend.from_config(mlserver.base_url, model_name=VERSIONED_MODEL_NAME,
                                      model_version=MODEL_VERSION, output_kind="probs",
                                      request_outputs=["predict_proba"], **DIGITS)
    try:
        assert backend.query(digits[:3]).scores.shape == (3, 10)
    finally:
        backend.close()


def test_asking_for_an_output_the_model_lacks_is_one_sentence_and_not_retried(mlserver, digits):
    backend = probabilities(mlserver.base_url, retries=3)
    backend.protocol.request_outputs = ["decision_function_typo"]
    book = Ledger(backend, budget=None)
    try:
        with pytest.raises(RuntimeError, match=r"^expected HTTP 200 from .*/v2/models/digits/infer, got HTTP 400: "):
            book.query(digits[:2], "train")
    finally:
        backend.close()
    assert book.summary()["train"]["calls"] == 1                 # a 4xx is the request's fault: no retry


def test_reprogramming_trains_through_mlserver_within_budget(mlserver, tmp_path):
    """A 24-step series reprogrammed into the digits classifier's 64 inputs, over V2."""
    config = load_config(base={
        "budget": 3000, "seed": 0,
        "backend": {"name": "http", "model": mlserver.base_url,
                    "options": {**DIGITS, "model_name": MODEL_NAME, "output_kind": "probs",
                                "request_outputs": ["predict_proba"]}},
        "data": {"name": "ItalyPowerDemand"}, "transform": {"kind": "signal", "grid": 16},
        "label_map": {"kind": "frequency", "per_class": 2},
        "estimator": {"kind": "random", "directions": 4}, "train": {"batch_size": 16, "eval_every": 4}})
    _, summary = run(config, run_dir=tmp_path / "run")
    assert summary["queries"]["probe"] == 1 and summary["steps"] > 10
    assert summary["budgeted_queries"] <= 3000 and summary["retried_queries"] == 0
    assert summary["backend"]["protocol"] == "v2" and summary["backend"]["url"] == mlserver.base_url
