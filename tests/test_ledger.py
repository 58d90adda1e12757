import numpy as np
import pytest

from blackbox_reprog.backends.base import CallableBackend
from blackbox_reprog.backends.ledger import BudgetExceeded, Ledger
from tests.models import CALLS, reset_calls, signal_model


def ledger(budget, max_batch=256):
    return Ledger(CallableBackend(signal_model, input_shape=(1024,), num_classes=32,
                                  max_batch=max_batch), budget)


def batch(n):
    return np.random.default_rng(n).normal(size=(n, 1024)).astype(np.float32)


def test_counts_queries_and_calls_per_purpose():
    book = ledger(100, max_batch=8)
    book.query(batch(20), "train")
    book.query(batch(5), "label-map")
    book.query(batch(3), "validate")
    book.query(batch(50), "test")
    s = book.summary()
    assert s["train"]["queries"] == 20 and s["train"]["calls"] == 3
    assert s["label-map"]["queries"] == 5 and s["validate"]["queries"] == 3
    assert s["test"]["queries"] == 50 and s["test"]["calls"] == 7
    assert s["total"]["queries"] == 78 and s["total"]["calls"] == 12
    assert s["budgeted"] == 28 and book.remaining == 72   # the test pass is outside the budget


def test_refuses_before_sending_a_call_that_would_exceed_the_budget():
    book = ledger(30)
    book.query(batch(25), "train")
    reset_calls()
    with pytest.raises(BudgetExceeded, match=r"a train call of 6 queries would exceed the budget \(25 of 30 spent\)"):
        book.query(batch(6), "train")
    assert CALLS["count"] == 0 and book.spent == 25
    book.query(batch(5), "validate")
    assert book.spent == 30 and book.remaining == 0


def test_bad_batch_is_refused_without_counting():
    book = ledger(10)
    with pytest.raises(ValueError):
        book.query(np.zeros((2, 3), np.float32), "train")
    with pytest.raises(ValueError, match="expected a purpose among"):
        book.query(batch(1), "training")
    assert book.summary()["total"]["queries"] == 0


def test_negative_budget_refused():
    with pytest.raises(ValueError, match="expected a budget of 0 or more queries, got -1"):
        ledger(-1)


def test_calls_sent_before_a_failure_stay_counted():
    sent = {"examples": 0}

    def flaky(x):
        sent["examples"] += len(x)
        if sent["examples"] > 4:
            raise ConnectionError("the second call fails")
        return signal_model(x)

    book = Ledger(CallableBackend(flaky, input_shape=(1024,), num_classes=32, max_batch=4), 100)
    with pytest.raises(ConnectionError):
        book.query(batch(8), "train")
    assert book.spent == sent["examples"] == 8 and book.summary()["train"]["calls"] == 2
