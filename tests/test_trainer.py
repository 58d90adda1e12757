"""The training loop on a cheap real model (a fixed random linear map behind CallableBackend)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blackbox_reprog.backends.base import CallableBackend, Prediction
from blackbox_reprog.backends.ledger import BudgetExceeded
from blackbox_reprog.run.config import load_config
from blackbox_reprog.run.runner import build
from blackbox_reprog.run.trainer import BudgetTooSmall
from tests.models import CALLS, reset_calls, signal_model


def backend():
    return CallableBackend(signal_model, input_shape=(1024,), num_classes=32, value_range=(-10.0, 10.0))


def config(**kw):
    base = {"data": {"name": "ItalyPowerDemand"}, "transform": {"grid": 16},
            "label_map": {"kind": "frequency", "per_class": 4},
            "estimator": {"kind": "random", "directions": 4}, "train": {"batch_size": 16, "eval_every": 3}}
    overrides = tuple(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}".replace("True", "true").replace("False", "false")
                      for k, v in kw.items())
    return load_config(base=base, overrides=overrides)


ESTIMATORS = st.sampled_from(["random", "antithetic", "coordinate", "spsa", "spsa-gc"])
MAPS = st.sampled_from(["random", "frequency", "iterative", "linear", "blm", "blm+"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(0, 4000), estimator=ESTIMATORS, label_map=MAPS,
       directions=st.integers(1, 6), batch=st.integers(1, 80), eval_every=st.integers(1, 5),
       max_steps=st.integers(0, 6), method=st.sampled_from(["blackbox", "evolution"]))
def test_the_budget_is_never_exceeded(budget, estimator, label_map, directions, batch, eval_every, max_steps, method):
    cfg = config(budget=budget, **{"estimator.kind": estimator, "label_map.kind": label_map,
                                   "estimator.directions": directions, "train.batch_size": batch,
                                   "train.eval_every": eval_every, "train.max_steps": max_steps,
                                   "train.method": method, "evolution.popsize": directions})
    reset_calls()
    try:
        trainer = build(cfg, backend=backend()).trainer
    except BudgetTooSmall:
        assert CALLS["examples"] == 0                     # refused before the first query
        return
    result = trainer.fit()
    budgeted = result.ledger["budgeted"]
    assert budgeted <= budget
    assert CALLS["examples"] == result.ledger["total"]["queries"]   # the ledger saw every query
    assert result.ledger["test"]["queries"] == 2 * len(build(cfg, backend=backend()).splits.test)


def test_budget_smaller_than_one_step_is_refused_with_nothing_spent():
    reset_calls()
    with pytest.raises(BudgetTooSmall, match=r"expected a budget of at least 161 queries \(label map 53, one step 80 = 5 programs × batch 16, two validation passes of 14\), got 100"):
        build(config(budget=100), backend=backend())
    assert CALLS["examples"] == 0


def test_same_seed_same_result_and_a_different_seed_differs():
    def once(seed):
        return build(config(budget=3000, seed=seed), backend=backend()).trainer.fit()
    a, b, c = once(0), once(0), once(1)
    assert torch.equal(a.theta, b.theta) and a.test_accuracy == b.test_accuracy
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert not torch.equal(a.theta, c.theta)


def test_training_lowers_the_loss_and_records_every_step():
    result = build(config(budget=20000, **{"optimizer.lr": 0.1}), backend=backend()).trainer.fit()
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert [r["step"] for r in result.history] == list(range(0, result.steps + 1))   # step 0: the zero program
    assert all(r["queries"] <= 20000 for r in result.history)
    queries = [r["queries"] for r in result.history]
    assert queries == sorted(queries)


def test_non_finite_losses_never_reach_the_step_rule():
    def sometimes_nan(x):
        out = signal_model(x)
        out[::3] = np.nan if CALLS["count"] % 2 else out[::3]
        return out
    nan_backend = CallableBackend(sometimes_nan, input_shape=(1024,), num_classes=32)
    nan_backend.check_answer = lambda p, n: p    # let the NaNs through to the loss
    trainer = build(config(budget=3000, **{"label_map.kind": "random"}), backend=nan_backend).trainer
    result = trainer.fit()
    assert any(r.get("non_finite") == "skipped" for r in result.history)
    assert torch.isfinite(result.theta).all()


def test_start_accuracy_is_the_zero_program_with_the_map_first_fitted():
    from blackbox_reprog.program.label_maps import LABEL_MAPS, target_accuracy
    from blackbox_reprog.backends.ledger import Ledger
    cfg = config(budget=20000, **{"label_map.kind": "iterative", "optimizer.lr": 0.1, "train.eval_every": 1000})
    components = build(cfg, backend=backend())
    result = components.trainer.fit()
    t = components.trainer
    t.ledger = Ledger(t.backend, None)
    zero = torch.zeros(t.transform.num_params)
    first_map = LABEL_MAPS.make("frequency", 32, 2, per_class=4).fit(
        t._dataset_log_probs(zero, components.splits.train, "label-map"), torch.as_tensor(components.splits.train.y))
    expected = target_accuracy(first_map(t._dataset_log_probs(zero, components.splits.test, "test")),
                               torch.as_tensor(components.splits.test.y))
    assert result.start_accuracy == pytest.approx(expected)
    assert not torch.equal(result.label_map.assignment, first_map.assignment)   # the map did move



@pytest.mark.parametrize("refit_every, max_steps, fits_after_start", [(3, 7, [3, 6]), (0, 9, [4, 8])])
def test_the_map_is_refitted_on_each_examples_latest_answers(refit_every, max_steps, fits_after_start):
    """Every refit sees the whole training split: the answers bought around θ for the examples
    batched so far, the zero program's for the rest. 0 refits once an epoch (53 examples, batch 16:
    every 4 steps)."""
    cfg = config(budget=20000, **{"label_map.kind": "linear", "label_map.refit": True,
                                  "label_map.refit_every": refit_every, "train.max_steps": max_steps,
                                  "optimizer.lr": 0.5})
    trainer = build(cfg, backend=backend()).trainer
    fits, steps = [], []
    fit = trainer.label_map.fit
    # a refit happens inside step s, before the step's row is reported: s - 1 steps are then (after step 0's row)
    trainer.label_map.fit = lambda log_probs, y: fits.append((max(len(steps) - 1, 0) + bool(fits), log_probs.clone(), y.clone())) or fit(log_probs, y)
    trainer.on_step = steps.append
    trainer.fit()
    assert [at for at, _, _ in fits] == [0] + fits_after_start
    start, first_refit = fits[0][1], fits[1][1]
    assert start.shape == first_refit.shape == (len(trainer.train_set), 32)
    changed = (first_refit != start).any(dim=1)                      # (N,) rows answered again
    assert 0 < int(changed.sum()) <= fits_after_start[0] * 16
    assert torch.equal(fits[1][2], torch.as_tensor(trainer.train_set.y))

def test_cosine_schedule_reaches_zero_when_the_budget_runs_out():
    cfg = config(budget=3000, **{"optimizer.schedule": "cosine", "train.eval_every": 1})
    trainer = build(cfg, backend=backend()).trainer
    result = trainer.fit()
    planned = trainer.planned_steps(trainer.search.population)
    assert abs(planned - result.steps) <= 1                       # the horizon is the real run length
    assert trainer.search.schedule.get_last_lr()[0] < 0.01 * cfg.optimizer.lr


class FlakyBackend(CallableBackend):
    """The signal model behind a connection that fails: each call is sent again, booked as
    a retry, with probability ``flakiness`` (as the http plugin does after a 5xx)."""

    def __init__(self, flakiness: float, seed: int):
        super().__init__(signal_model, input_shape=(1024,), num_classes=32, value_range=(-10.0, 10.0), max_batch=40)
        self.flakiness, self.rng = flakiness, np.random.default_rng(seed)
        self.sent = 0                                        # examples that left, retries included

    def query(self, x, on_send=None, key=None):
        def send(n, retry=False):
            on_send(n, retry=retry)
            self.sent += n
        parts = []
        for i in range(0, len(x), self.max_batch):
            chunk = x[i:i + self.max_batch]
            send(len(chunk))
            while self.rng.random() < self.flakiness:
                send(len(chunk), retry=True)
            parts.append(self._predict(chunk))
        return Prediction.concat(parts)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(300, 3000), flakiness=st.sampled_from([0.0, 0.1, 0.5, 0.9]), seed=st.integers(0, 99),
       batch=st.integers(1, 40), method=st.sampled_from(["blackbox", "evolution"]))
def test_retries_count_against_the_budget_and_never_exceed_it(budget, flakiness, seed, batch, method):
    """Retried examples may be billed: they are spent like any query, a retry that would go
    over the budget is refused before it is sent, and training then ends with what it has."""
    cfg = config(budget=budget, **{"train.batch_size": batch, "train.method": method, "evolution.popsize": 4})
    flaky = FlakyBackend(flakiness, seed)
    try:
        trainer = build(cfg, backend=flaky).trainer
    except BudgetTooSmall:
        assert flaky.sent == 0
        return
    try:
        result = trainer.fit()
    except BudgetExceeded:            # retries took the budget before the first step: nothing over it
        assert trainer.ledger.spent <= budget
        return
    ledger = result.ledger
    assert ledger["budgeted"] <= budget
    assert flaky.sent == ledger["total"]["queries"] + ledger["total"]["retried"]  # every attempt booked
    if flakiness == 0:
        assert ledger["total"]["retried"] == 0 and result.stopped in ("budget", "max_steps")
