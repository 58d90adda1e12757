"""The command line, driven in-process with click's CliRunner (stdout and stderr kept apart)."""
import json

import pytest
from click.testing import CliRunner

from blackbox_reprog.tools.cli import main
from tests.models import CALLS, reset_calls

CALLABLE = ("--set", "backend.name=callable", "--set", "backend.model=tests.models:signal_model",
            "--set", "backend.options={input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}")


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_backends_lists_the_installed_plugins():
    result = invoke("backends")
    assert result.exit_code == 0
    assert "onnx" in result.stdout and "callable" in result.stdout and "bbreprog_onnx:OnnxBackend" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("--set", "estimator.directons=5"), "error: unknown config key estimator.directons for estimator.kind 'random'; did you mean estimator.directions?"),
    (("--set", "backend.name=onxx"), "error: unknown backend 'onxx'; did you mean 'onnx'? installed: callable, http, onnx"),
    (("--set", "backend.name=ONNX"), "error: unknown backend 'ONNX'; did you mean 'onnx'? installed: callable, http, onnx"),
    (("--set", "data.name=/no/such/file.ts"), "error: "),
    (("--set", "data.name=digits"), "error: the signal program expects 1-D series and a 1-D model input, got target (1, 8, 8) and model input (1024,)"),
    (("--budget", "10"), "error: expected a budget of at least"),
])
def test_refusals_are_one_sentence_exit_2_and_spend_nothing(tmp_path, args, message):
    reset_calls()
    result = invoke("demo", "--quiet", "--out", str(tmp_path), *CALLABLE, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert CALLS["examples"] == 0
    assert not any(tmp_path.iterdir())                       # no run folder for a refused run


def test_unknown_config_file_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[estimator]\nkind = 'random'\nsmoothng = 0.1\n")
    result = invoke("train", str(path), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert result.stderr == "error: unknown config key estimator.smoothng for estimator.kind 'random'; did you mean estimator.smoothing?\n"


def test_train_writes_the_run_folder_and_evaluate_and_predict_read_it(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'budget = 6000\nseed = 2\nname = "coffee"\n'
        '[backend]\nname = "onnx"\nmodel = "crepe-tiny"\n'
        '[data]\nname = "Coffee"\n'
        '[transform]\nkind = "signal"\ngrid = 32\n'
        '[label_map]\nkind = "frequency"\nper_class = 5\n'
        '[estimator]\nkind = "antithetic"\ndirections = 4\n'
        '[train]\nbatch_size = 16\neval_every = 4\n')
    result = invoke("train", str(config), "--out", str(tmp_path / "runs"), "--quiet")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "coffee"
    assert {p.name for p in run.iterdir()} >= {"config.toml", "metrics.jsonl", "result.json", "accuracy.png", "program.pt"}
    summary = json.loads((run / "result.json").read_text())
    for key in ("test_accuracy", "start_accuracy", "chance_accuracy", "budget", "seed", "wall_seconds"):
        assert key in summary
    assert summary["queries"]["total"] == sum(summary["queries"][p] for p in ("train", "label-map", "validate", "test"))
    assert summary["budgeted_queries"] <= 6000 and summary["seed"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == summary["steps"] + 1 and all({"step", "queries", "loss"} <= r.keys() for r in rows)  # + step 0
    assert (run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"test accuracy {summary['test_accuracy']:.3f}" in result.stdout

    evaluated = invoke("evaluate", str(run))
    assert evaluated.exit_code == 0
    report = json.loads(evaluated.stdout)
    assert report["test_accuracy"] == round(summary["test_accuracy"], 4) and report["queries"] == 28   # printed to 4 decimals

    out = tmp_path / "pred.csv"
    predicted = invoke("predict", str(run), "Coffee", "-o", str(out))
    assert predicted.exit_code == 0 and "28 predictions" in predicted.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "input,label,score,probability" and len(lines) == 29 and {l.split(",")[1] for l in lines[1:]} <= {"0", "1"}


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = invoke("evaluate", str(tmp_path))
    assert result.exit_code == 2 and result.stderr.startswith("error: expected a finished run folder with program.pt")


def test_the_demo_preset_documented_in_cli_md_is_the_real_one():
    import re
    import tomllib
    from pathlib import Path

    from blackbox_reprog.tools.cli import DEMO
    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    block = re.search(r"## `bbreprog demo`.*?```toml\n(.*?)```", text, re.S).group(1)
    assert tomllib.loads(block) == DEMO


@pytest.mark.parametrize("args, message", [
    (("--set", "backend.options={input_shape = [1024], num_classes = 32, foo = 1}"),
     "error: expected backend.options that the callable backend accepts, got ['foo', 'input_shape', 'num_classes']"),
    (("--set", "backend.output=label", "--set", "label_map.kind=blm+"),
     "error: expected scores (logits, probs or topk) for label_map.kind 'blm+', got a backend answering labels only"),
])
def test_more_refusals_before_any_query(tmp_path, args, message):
    reset_calls()
    result = invoke("demo", "--quiet", "--out", str(tmp_path), *CALLABLE, *args)
    assert result.exit_code == 2 and result.stderr.startswith(message), result.stderr
    assert CALLS["examples"] == 0 and not any(tmp_path.iterdir())


def test_a_damaged_program_file_is_one_sentence(tmp_path):
    (tmp_path / "config.toml").write_text("")
    (tmp_path / "program.pt").write_bytes(b"junk")
    result = invoke("evaluate", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: expected a readable program.pt in {tmp_path}, got one that fails to load (")
    assert result.stderr.count("\n") == 1


def test_a_run_trained_on_a_relative_path_is_evaluated_from_another_folder(tmp_path, monkeypatch):
    """config.toml keeps the dataset's absolute path, so the run folder works from anywhere."""
    import numpy as np
    rng = np.random.default_rng(0)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    y = np.arange(60) % 2
    x = (rng.normal(size=(60, 64)) + y[:, None]).astype(np.float32)                # (60, 64) two shifted classes
    np.savez(work / "series.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    monkeypatch.chdir(work)
    trained = invoke("demo", "--quiet", "--out", "runs", "--budget", "3000", *CALLABLE, "--set", "name=rel",
                     "--set", "data.name=series.npz", "--set", "transform.grid=16")
    assert trained.exit_code == 0, trained.output
    summary = json.loads((work / "runs" / "rel" / "result.json").read_text())
    assert 'name = "' + str(work / "series.npz") + '"' in (work / "runs" / "rel" / "config.toml").read_text()

    monkeypatch.chdir(elsewhere)
    evaluated = invoke("evaluate", str(work / "runs" / "rel"))
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["test_accuracy"] == round(summary["test_accuracy"], 4)


def test_resume_refuses_a_finished_run_and_says_when_it_buys_everything_again(tmp_path):
    trained = invoke("demo", "--quiet", "--out", str(tmp_path), "--budget", "3000", *CALLABLE, "--set", "name=nj")
    assert trained.exit_code == 0, trained.output
    first = json.loads((tmp_path / "nj" / "result.json").read_text())
    reset_calls()
    refused = invoke("resume", str(tmp_path / "nj"), "--quiet")
    assert refused.exit_code == 2 and refused.stderr == (
        f"error: expected an interrupted run to resume, got {tmp_path / 'nj'}, which finished (its result.json is "
        "written); train again to start over\n") and CALLS["examples"] == 0
    (tmp_path / "nj" / "result.json").unlink()                   # as a killed run leaves it
    resumed = invoke("resume", str(tmp_path / "nj"), "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stderr == (f"note: {tmp_path / 'nj'} had no journal.jsonl (train.journal was off): the run "
                              "started over and bought every answer again\n")
    again = json.loads((tmp_path / "nj" / "result.json").read_text())
    assert CALLS["examples"] == first["queries"]["total"] and again["test_accuracy"] == first["test_accuracy"]
