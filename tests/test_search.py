"""The three ways θ moves — zeroth-order, white-box autograd, nevergrad evolution — on real models."""
import json

import numpy as np
import pytest
import torch

from blackbox_reprog.backends.base import CallableBackend
from blackbox_reprog.tools.cli import DEMO
from blackbox_reprog.run.config import load_config
from blackbox_reprog.backends.ledger import BudgetExceeded, Ledger
from blackbox_reprog.run.runner import build, run
from blackbox_reprog.search.strategies import Evolution
from blackbox_reprog.program.transforms import TRANSFORMS
from tests.models import signal_model


def demo(**overrides):
    sets = tuple(f"{k}={v}" for k, v in overrides.items())
    return load_config(base=DEMO, overrides=sets + ("train.eval_every=4",))


def test_spend_is_refused_over_budget_like_a_query():
    ledger = Ledger(CallableBackend(signal_model, input_shape=(1024,), num_classes=32), 10)
    ledger.spend(8, "train")
    with pytest.raises(BudgetExceeded, match=r"a train call of 3 queries would exceed the budget \(8 of 10 spent\)"):
        ledger.spend(3, "train")
    assert ledger.summary()["train"] == {"queries": 8, "stored": 0, "retried": 0, "calls": 1, "seconds": 0.0}


@pytest.mark.parametrize("optimizer, subspace, popsize, sigma, budget", [
    ("DiagonalCMA", 0, 20, 0.1, 48_000),       # 32 control points searched directly
    ("CMA", 8, 10, 0.2, 24_000),               # BBT: full CMA in an 8-dim random subspace of them
])
@pytest.mark.slow
def test_evolution_trains_the_demo_pair_and_stops_within_the_budget(optimizer, subspace, popsize, sigma, budget):
    config = demo(**{"train.method": "evolution", "evolution.optimizer": optimizer, "evolution.popsize": popsize,
                     "evolution.sigma": sigma, "transform.subspace": subspace, "budget": budget,
                     "transform.grid": 32, "label_map.kind": "frequency"})
    result = build(config).trainer.fit()
    assert result.ledger["budgeted"] <= budget
    assert result.ledger["budgeted"] > budget - (popsize * 51 + 16)  # stopped only when the next step would not fit
    assert result.test_accuracy > result.start_accuracy + 0.03, (result.test_accuracy, result.start_accuracy)


@pytest.mark.slow
def test_evolution_is_reproducible_with_a_seed():
    config = demo(**{"train.method": "evolution", "evolution.popsize": 6, "budget": 4000, "transform.grid": 16})
    a, b = build(config).trainer.fit(), build(config).trainer.fit()
    assert torch.equal(a.theta, b.theta)


def test_evolution_never_lets_a_non_finite_loss_become_the_recommendation():
    theta = torch.zeros(4)
    search = Evolution(theta, "DiagonalCMA", popsize=4, sigma=1.0, seed=0, generations=5)
    asked = search.ask()
    assert asked.thetas.shape == (4, 4)
    losses = torch.ones(4)
    losses[0], losses[1] = -torch.inf, torch.nan          # −inf would be "best" forever
    search.tell(asked, losses)
    best = search.optimizer.current_bests["pessimistic"].mean
    assert best == pytest.approx(1.0)          # −inf and NaN were told as worst + 1 = 2, never as the best
    assert torch.equal(theta, torch.as_tensor(search.optimizer.recommend().value, dtype=torch.float32))


@pytest.mark.parametrize("name, dim, message", [
    ("DiagonalCMAA", 10, "unknown nevergrad optimizer 'DiagonalCMAA'; close names: DiagonalCMA"),
    ("CMA", 1000, "expected at most 500 parameters for full CMA"),
])
def test_evolution_refuses_unknown_names_and_the_cma_trap(name, dim, message):
    with pytest.raises(ValueError, match=message):
        Evolution(torch.zeros(dim), name, popsize=8, sigma=0.5, seed=0, generations=3)


def test_subspace_maps_a_small_theta_onto_the_program():
    t = TRANSFORMS.make("signal", (24,), (1024,), (-10.0, 10.0), grid=64, subspace=8, seed=3)
    assert t.num_params == 8 and t.inner.num_params == 64
    z, x = torch.randn(5, 8), torch.randn(2, 24)
    out = t(z, x)                                                    # (P, B, L)
    assert out.shape == (5, 2, 1024)
    assert torch.equal(out, t.inner(z @ t.projection.T, x))
    assert abs(float(t.projection.std()) - 8 ** -0.5) < 0.05          # entries N(0, 1/k)
    with pytest.raises(ValueError, match="expected a subspace smaller than the program's 64 parameters, got 64"):
        TRANSFORMS.make("signal", (24,), (1024,), (-10.0, 10.0), grid=64, subspace=64)


def test_whitebox_needs_a_backend_with_gradients():
    config = load_config(overrides=("train.method=whitebox", "backend.name=callable",
                                    "backend.model=tests.models:signal_model",
                                    "backend.options={input_shape = [1024], num_classes = 32}"))
    with pytest.raises(ValueError, match="expected a backend with gradients \\(the torch plugin\\) for train.method 'whitebox', got callable"):
        build(config)


@pytest.mark.slow
def test_whitebox_counts_one_query_per_example_and_matches_onnx_answers():
    config = demo(**{"train.method": "whitebox", "budget": 2000, "train.max_steps": 5})
    components = build(config)
    assert components.backend.name == "torch"                       # the zoo model, served with gradients
    result = components.trainer.fit()
    assert result.ledger["train"]["queries"] == 5 * 51              # steps × batch, forward+backward each
    from blackbox_reprog.backends.registry import create_backend
    x = np.random.default_rng(0).normal(size=(3, 1024)).astype(np.float32)
    torch_scores = components.backend.query(x).scores
    onnx_scores = create_backend("onnx", "crepe-tiny").query(x).scores
    assert np.abs(torch_scores - onnx_scores).max() < 1e-3


@pytest.mark.slow
def test_whitebox_steps_in_chunks_move_theta_as_one_batch_does():
    """A batch of 51 through the torch model in calls of 7 (8 chunks, the last of 2): the chunk
    gradients add up to the whole batch's, so θ ends where one call of 256 takes it."""
    thetas = []
    for max_batch in (7, 256):
        config = demo(**{"train.method": "whitebox", "budget": 2000, "train.max_steps": 3,
                         "backend.options": f"{{max_batch = {max_batch}}}"})
        components = build(config)
        assert components.backend.max_batch == max_batch
        thetas.append(components.trainer.fit().theta)
    assert thetas[0].abs().max() > 0.01                             # θ moved
    torch.testing.assert_close(thetas[0], thetas[1], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_whitebox_beats_or_matches_blackbox_with_the_same_seed_and_steps(tmp_path):
    config = demo(**{"budget": 30_000, "train.compare_with": "whitebox", "out": f'"{tmp_path}"', "name": "cmp"})
    run_dir, summary = run(config)
    stored = json.loads((run_dir / "result.json").read_text())
    comparison = stored["comparison"]
    assert comparison["method"] == "whitebox" and comparison["steps"] == summary["steps"]
    assert comparison["test_accuracy"] >= summary["test_accuracy"]
    assert (run_dir / "compare-whitebox" / "result.json").is_file()


@pytest.mark.slow
def test_a_run_killed_during_its_comparison_resumes_it(tmp_path):
    """Killed while the whitebox comparison ran: the run folder holds the main run's
    checkpoint and a comparison folder without its result. The resume replays both."""
    from blackbox_reprog.run.runner import Run
    config = demo(**{"budget": 4000, "train.compare_with": "whitebox", "out": f'"{tmp_path}"', "name": "cmp"})
    run_dir, summary = run(config)
    for path in ("result.json", "program.pt", "compare-whitebox/result.json", "compare-whitebox/program.pt"):
        (run_dir / path).unlink()
    _, resumed = Run(load_config(run_dir / "config.toml")).execute(run_dir, resume=True)
    same = {k: v for k, v in summary["comparison"].items() if k != "wall_seconds"}
    assert {k: v for k, v in resumed["comparison"].items() if k != "wall_seconds"} == same
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    assert (run_dir / "compare-whitebox" / "result.json").is_file()


@pytest.mark.parametrize("name", ["TwoPointsDE", "TBPSA", "OnePlusOne", "NGOpt", "DiagonalCMA", "PSO"])
def test_every_named_nevergrad_optimizer_runs_within_the_budget(name):
    config = load_config(overrides=(
        "train.method=evolution", f"evolution.optimizer={name}", "evolution.popsize=4", "budget=900",
        "data.name=ItalyPowerDemand", "transform.grid=8", "label_map.kind=random", "train.batch_size=16",
        "backend.name=callable", "backend.model=tests.models:signal_model",
        "backend.options={input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}"))
    result = build(config).trainer.fit()
    assert result.steps >= 2 and result.ledger["budgeted"] <= 900
    assert result.ledger["train"]["queries"] == result.steps * 4 * 16


def test_torch_backend_passes_conformance_for_zoo_models_and_user_modules():
    from blackbox_reprog.backends.registry import create_backend
    from blackbox_reprog.backends.testing import check_backend
    check_backend(create_backend("torch", "crepe-tiny"))
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    from bbreprog_torch import TorchBackend
    check_backend(TorchBackend(module, input_shape=(3, 4), num_classes=5, value_range=(0.0, 1.0)))
    with pytest.raises(ValueError, match="expected input_shape and num_classes for the model 'Sequential'"):
        TorchBackend(module)
    if not torch.cuda.is_available():              # this machine; a GPU machine runs the CUDA path
        with pytest.raises(ValueError, match=r"expected a CUDA device for device 'cuda', got none"):
            TorchBackend(module, device="cuda", input_shape=(3, 4), num_classes=5)


@pytest.mark.parametrize("overrides, message", [
    (("train.compare_with=whitebox", "backend.output=topk"), "expected a backend with gradients"),
    (("train.method=whitebox", "loss.kind=zero-one"), "expected a differentiable loss \\(ce, focal or margin\\) for train.method 'whitebox', got 'zero-one'"),
])
def test_impossible_whitebox_runs_are_refused_before_any_query(tmp_path, overrides, message):
    from blackbox_reprog.run.runner import Run
    config = load_config(base=DEMO, overrides=overrides + (f'out="{tmp_path}"',))
    with pytest.raises(ValueError, match=message):
        Run(config)
    assert not any(tmp_path.iterdir())


def test_whitebox_drops_onnx_only_options():
    config = demo(**{"train.method": "whitebox", "backend.options": "{threads = 1, device = \"cpu\"}"})
    assert build(config).backend.name == "torch"
