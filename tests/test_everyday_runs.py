"""Everyday runs (issue 21): early stopping, the zero program's row at step 0, the plan before
anything is spent, reading the results, the progress bars, Ctrl-C, and where the config keys are.

Runs use the signal model behind CallableBackend (tests/models.py, which counts every example
it answers) on ItalyPowerDemand; the Ctrl-C test runs the CLI in a real subprocess."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from blackbox_reprog.backends.base import CallableBackend
from blackbox_reprog.run.config import ConfigError, load_config
from blackbox_reprog.run.runner import INTERRUPTED, build
from blackbox_reprog.tools.cli import main
from blackbox_reprog.tools.cli.runs import against_the_zero_program
from tests.http_support import ScriptedServer
from tests.models import CALLS, reset_calls, signal_model

ROOT = Path(__file__).parents[1]
BBREPROG = str(Path(sys.executable).with_name("bbreprog"))

#: a small signal run: 4 directions + 1 = 5 programs × batch 16 = 80 queries a step, 14 to validate
CONFIG = """budget = {budget}
seed = 0
name = "{name}"
[backend]
name = "callable"
model = "{model}"
options = {{input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}}
[data]
name = "ItalyPowerDemand"
[transform]
kind = "signal"
grid = 16
[label_map]
kind = "frequency"
per_class = 4
[estimator]
kind = "random"
directions = 4
[optimizer]
kind = "adam"
lr = {lr}
[train]
batch_size = 16
eval_every = {eval_every}
patience = {patience}
max_steps = {max_steps}
"""


def write_config(folder: Path, *, budget=10_000, name="run", model="tests.models:signal_model", lr=0.05,
                 eval_every=1, patience=0, max_steps=0) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(CONFIG.format(budget=budget, name=name, model=model, lr=lr, eval_every=eval_every,
                                  patience=patience, max_steps=max_steps))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def result_of(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def slow_signal_model(x):
    """The signal model, 50 ms a call: a run long enough to be interrupted mid-way."""
    time.sleep(0.05)
    return signal_model(x)


# ---- item 1: early stopping, and the budget it leaves unspent ------------------------------------
def test_patience_stops_at_the_first_run_of_validations_without_a_lower_loss_and_spends_no_more(tmp_path):
    config = write_config(tmp_path, patience=2)
    reset_calls()
    done = invoke("train", config, "--out", tmp_path / "runs")
    assert done.exit_code == 0, done.output
    run = tmp_path / "runs" / "run"
    result, rows = result_of(run), rows_of(run)
    assert result["stopped"] == "early"

    # the stop rule, read back from metrics.jsonl: stop at the first `patience` passes in a row
    # that do not lower the lowest validation loss so far
    losses = [row["val_loss"] for row in rows if "val_loss" in row]           # eval_every 1: every step
    stale, stopped_at = 0, None
    for step, loss in enumerate(losses):
        stale = 0 if loss < min(losses[:step], default=float("inf")) else stale + 1
        if stale == 2:
            stopped_at = step
            break
    assert stopped_at == result["steps"] == rows[-1]["step"] and 0 < result["steps"] < 100

    # what was not sent is unspent, and billed nowhere
    assert result["unspent"] == 10_000 - result["budgeted_queries"] > 9_000
    assert CALLS["examples"] == result["ledger"]["total"]["queries"] == result["billing"]["possibly_billed"]
    assert result["budgeted_queries"] == rows[-1]["queries"]
    assert f"steps {result['steps']} (stopped early: 2 validation passes without a lower loss)" in done.stdout
    assert "stopped early" in done.stderr.split("\r")[-1] or ", stopped early" in done.stderr   # the bar says why

    # patience 0 (the default) never stops early: the same run goes on until the budget
    again = invoke("train", write_config(tmp_path, name="off"), "--out", tmp_path / "runs", "--quiet")
    assert again.exit_code == 0, again.output
    assert result_of(tmp_path / "runs" / "off")["stopped"] == "budget"


def test_patience_is_a_checked_config_key():
    assert load_config().train.patience == 0
    assert load_config(overrides=("train.patience=3",)).train.patience == 3
    with pytest.raises(ConfigError, match=r"expected train.patience at least 0, got -1"):
        load_config(overrides=("train.patience=-1",))


def test_the_summary_says_when_the_chosen_program_is_the_zero_program(tmp_path):
    done = invoke("train", write_config(tmp_path, lr=0.5, max_steps=10), "--out", tmp_path / "runs", "--quiet")
    assert done.exit_code == 0, done.output
    result = result_of(tmp_path / "runs" / "run")
    assert result["best_step"] == 0 and result["test_accuracy"] == result["start_accuracy"]
    assert (f"note: the chosen program is the zero program: no step lowered the validation loss below the zero "
            f"program's {result['start_validation_loss']:.3f}, so the 800 training queries bought no improvement "
            "(see accuracy.png)") in done.stdout.splitlines()


def test_the_summary_says_when_the_chosen_program_is_no_better_than_the_zero_program():
    summary = {"best_step": 7, "best_validation_loss": 0.41, "best_validation_accuracy": 0.75,
               "start_validation_loss": 0.52, "start_validation_accuracy": 0.8125,
               "test_accuracy": 0.70, "start_accuracy": 0.726, "queries": {"train": 800}}
    assert against_the_zero_program(summary) == [
        "note: the chosen program (step 7) is no better than the zero program on validation: accuracy 0.750 "
        "against 0.812 (it was chosen for its lower validation loss, 0.410 against 0.520)",
        "note: the chosen program tested below the zero program: 0.700 against 0.726"]
    better = {**summary, "best_validation_accuracy": 0.875, "test_accuracy": 0.8}
    assert against_the_zero_program(better) == []


# ---- item 2: the zero program's validation is the row of step 0 ----------------------------------
@pytest.mark.parametrize("label_map", ["frequency", "random"])
def test_metrics_jsonl_starts_with_the_zero_programs_row(tmp_path, label_map):
    done = invoke("train", write_config(tmp_path, eval_every=3, max_steps=7), "--out", tmp_path / "runs",
                  "--quiet", "--set", f"label_map.kind={label_map}")
    assert done.exit_code == 0, done.output
    result, rows = result_of(tmp_path / "runs" / "run"), rows_of(tmp_path / "runs" / "run")
    zero = rows[0]
    assert [row["step"] for row in rows] == list(range(0, 8))
    assert set(zero) == set(rows[3]) == {"step", "queries", "loss", "val_loss", "val_accuracy"}
    assert zero["queries"] == result["queries"]["label-map"] + result["data"]["validation"]    # spent by then
    assert zero["val_loss"] == result["start_validation_loss"]
    assert zero["val_accuracy"] == result["start_validation_accuracy"]
    if label_map == "random":             # no training answers were bought: no training loss to report
        assert result["queries"]["label-map"] == 0 and zero["loss"] is None
    else:
        assert 0 < zero["loss"] < 10


# ---- item 3: the plan before spending -------------------------------------------------------------
PLAN_ROW = re.compile(r"^  (probe|label-map|train|validate|budgeted|test|total)\s+([\d,]+)")


def plan_numbers(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2).replace(",", "")) for m in map(PLAN_ROW.match, text.splitlines()) if m}


@pytest.mark.parametrize("eval_every, budget, max_steps", [(1, 10_000, 0), (5, 7_777, 0), (3, 50_000, 12)])
def test_the_dry_run_plans_exactly_what_the_run_spends_and_sends_nothing(tmp_path, eval_every, budget, max_steps):
    config = write_config(tmp_path, eval_every=eval_every, budget=budget, max_steps=max_steps)
    reset_calls()
    dry = invoke("train", config, "--out", tmp_path / "runs", "--dry-run", "--price", "2")
    assert dry.exit_code == 0, dry.output
    assert CALLS["examples"] == 0 and not (tmp_path / "runs").exists()          # nothing sent, nothing written
    planned = plan_numbers(dry.stdout)
    total = planned["budgeted"] + planned["test"]
    assert f"cost at 2 per 1,000 queries: {total * 2 / 1000:,.2f} as planned" in dry.stdout

    done = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert done.exit_code == 0, done.output
    result = result_of(tmp_path / "runs" / "run")
    for purpose in ("probe", "label-map", "train", "validate", "test"):
        assert planned[purpose] == result["queries"][purpose], purpose
    assert planned["budgeted"] == result["budgeted_queries"] and planned["total"] == result["queries"]["total"]
    assert f"{result['steps']} steps × 80 (5 programs × batch 16)" in dry.stdout


def test_the_demos_dry_run_sends_crepe_tiny_nothing_and_plans_what_the_demo_spends(tmp_path, counted):
    dry = invoke("demo", "--budget", 2_500, "--out", tmp_path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert counted["examples"] == 0 and not any(tmp_path.iterdir())
    planned = plan_numbers(dry.stdout)
    assert dry.stdout.splitlines()[0] == ("plan: ItalyPowerDemand on onnx crepe-tiny, blackbox, budget 2,500 (nothing "
                                          "is sent, no run folder is written)")
    done = invoke("demo", "--budget", 2_500, "--out", tmp_path, "--quiet")
    assert done.exit_code == 0, done.output
    result = result_of(tmp_path / "ItalyPowerDemand-blackbox-s0")
    assert counted["examples"] == result["queries"]["total"] == planned["total"]
    assert planned["budgeted"] == result["budgeted_queries"] and planned["train"] == result["queries"]["train"]


def test_a_dry_run_does_not_contact_a_remote_endpoint(tmp_path):
    http = ('--set', 'backend.name=http', '--set', 'backend.model={url}', '--set',
            'backend.options={{protocol = "v2", model_name = "sig", input_shape = [1024], num_classes = 32, '
            'value_range = [-10.0, 10.0], output_kind = "logits"}}')
    config = write_config(tmp_path)
    with ScriptedServer() as server:
        dry = invoke("train", config, "--out", tmp_path / "runs", "--dry-run",
                     *[part.format(url=server.url) for part in http])
        assert dry.exit_code == 0, dry.output
        assert server.requests == [] and not (tmp_path / "runs").exists()
        planned = plan_numbers(dry.stdout)
        assert planned["probe"] == 1 and "on http endpoint, not contacted" in dry.stdout
        # the control: building the run itself does contact it (its health check)
        from blackbox_reprog.run.runner import Run
        options = {"protocol": "v2", "model_name": "sig", "input_shape": [1024], "num_classes": 32}
        Run(load_config(config, overrides=("backend.name=http", f"backend.model={server.url!r}"),
                        base={"backend": {"options": options}})).components.backend.close()
        assert [r.method for r in server.requests] == ["GET"]


def test_a_dry_run_on_a_remote_backend_needs_its_spec_in_the_config(tmp_path):
    config = tmp_path / "remote.toml"
    config.write_text('[backend]\nname = "http"\nmodel = "http://127.0.0.1:9"\noptions = {protocol = "v2"}\n')
    dry = invoke("train", config, "--dry-run")
    assert dry.exit_code == 2
    assert dry.stderr == ("error: expected backend.options input_shape and num_classes to plan a run on a remote "
                          "backend without contacting it, got input_shape none and num_classes none\n")


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(200, 40_000), eval_every=st.integers(1, 9), max_steps=st.integers(0, 60))
def test_the_planned_steps_are_the_most_the_loops_rule_lets_go(budget, eval_every, max_steps):
    """The loop makes step s+1 while that step and the validation after it fit what is left;
    the plan's closed form must find the same number as trying every count."""
    backend = CallableBackend(signal_model, input_shape=(1024,), num_classes=32, value_range=(-10.0, 10.0))
    config = load_config(base={"transform": {"grid": 16}, "estimator": {"directions": 4},
                               "train": {"batch_size": 16}}, budget=40_000)
    trainer = build(config, backend=backend).trainer
    trainer.ledger.budget, trainer.eval_every, trainer.max_steps = budget, eval_every, max_steps
    steps = 0
    while (not max_steps or steps < max_steps) and trainer.budgeted_cost(steps + 1) <= budget:
        steps += 1
    assert trainer.affordable_steps() == steps
    assert trainer.plan()["budgeted"] == trainer.budgeted_cost(steps) <= max(budget, trainer.budgeted_cost(0))


# ---- item 4: reading the results ------------------------------------------------------------------
def test_evaluate_rounds_and_result_json_holds_the_confusion_matrix_of_the_test_pass(tmp_path):
    reset_calls()
    done = invoke("train", write_config(tmp_path, budget=3_000, eval_every=5), "--out", tmp_path / "runs")
    assert done.exit_code == 0, done.output
    result = result_of(tmp_path / "runs" / "run")
    test_size = result["data"]["test"]
    assert CALLS["examples"] == result["ledger"]["total"]["queries"]
    assert result["queries"]["test"] == 2 * test_size                       # no query of its own

    confusion = result["test_confusion"]
    assert result["classes"] == ["1", "2"] and len(confusion) == 2 and all(len(row) == 2 for row in confusion)
    assert sum(map(sum, confusion)) == test_size
    assert (confusion[0][0] + confusion[1][1]) / test_size == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert result["test_per_class_accuracy"] == [confusion[k][k] / sum(confusion[k]) for k in range(2)]

    summary = done.stdout.splitlines()
    q = result["queries"]
    assert (f"queries: {q['total']:,} = train {q['train']:,} + label-map {q['label-map']:,} + validate "
            f"{q['validate']:,} + test {q['test']:,} (outside the budget); budget 3,000: "
            f"{result['budgeted_queries']:,} spent, {result['unspent']:,} unspent") in summary

    evaluated = invoke("evaluate", tmp_path / "runs" / "run")
    assert evaluated.exit_code == 0
    accuracy = re.search(r'"test_accuracy": ([0-9.]+)', evaluated.stdout).group(1)
    assert accuracy == repr(round(result["test_accuracy"], 4)) and len(repr(result["test_accuracy"])) > 7


# ---- item 5: progress, and Ctrl-C -------------------------------------------------------------------
def test_the_bars_end_at_100_percent_keep_their_width_and_the_test_pass_has_one(tmp_path):
    # tqdm draws at most every 0.1 s: a model of 50 ms a call lets it draw most steps
    config = write_config(tmp_path, budget=3_000, eval_every=5, model="tests.test_everyday_runs:slow_signal_model")
    done = invoke("train", config, "--out", tmp_path / "runs")
    assert done.exit_code == 0, done.output
    frames = [f.rstrip("\n") for f in done.stderr.split("\r") if f.strip()]
    training = [f for f in frames if f.startswith("ItalyPowerDemand: ")]
    testing = [f for f in frames if f.startswith("ItalyPowerDemand test: ")]
    assert len(training) > 3 and len({len(f) for f in training}) == 1, training       # one width throughout
    assert "100%" in training[-1] and "val " in training[0]                           # val shown from step 0
    assert testing and "100%" in testing[-1] and "2.06k/2.06k" in testing[-1]


def test_ctrl_c_marks_the_folder_says_how_to_resume_and_resume_finishes_it(tmp_path):
    config = write_config(tmp_path, model="tests.test_everyday_runs:slow_signal_model", budget=50_000,
                          eval_every=5, max_steps=30)
    run = tmp_path / "runs" / "run"
    process = subprocess.Popen([BBREPROG, "train", str(config), "--out", str(tmp_path / "runs"), "--quiet"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    marker = json.loads((run / INTERRUPTED).read_text())
    assert process.returncode == 1, err
    assert err.splitlines() == [f"interrupted: the run in {run} stopped at step {marker['step']} after "
                                f"{marker['queries']:,} budgeted queries; continue it with `bbreprog resume {run}`"]
    assert 1 <= marker["step"] < 30 and marker["resume"] == f"bbreprog resume {run}" and out == ""
    assert not (run / "result.json").exists() and (run / "checkpoint.pt").exists()

    evaluated = invoke("evaluate", run)
    assert evaluated.exit_code == 2 and evaluated.stderr == (
        f"error: expected a finished run folder, got {run}, which was interrupted at step {marker['step']}; "
        f"continue it with `bbreprog resume {run}`\n")

    resumed = subprocess.run([BBREPROG, "resume", str(run), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert result_of(run)["steps"] == 30 and not (run / INTERRUPTED).exists()
    assert invoke("evaluate", run).exit_code == 0


def test_a_new_run_says_when_its_folder_name_holds_an_interrupted_run(tmp_path):
    config = write_config(tmp_path, budget=3_000, eval_every=5)
    (tmp_path / "runs" / "run").mkdir(parents=True)
    (tmp_path / "runs" / "run" / INTERRUPTED).write_text('{"step": 3, "queries": 400}\n')
    done = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert done.exit_code == 0, done.output
    earlier = tmp_path / "runs" / "run"
    assert done.stderr.startswith(f"note: {earlier} holds an interrupted run (`bbreprog resume {earlier}` continues "
                                  "it); this run starts over in a new folder\n")
    assert (tmp_path / "runs" / "run-2" / "result.json").is_file()


# ---- item 6: where the config keys are ----------------------------------------------------------------
def test_train_help_points_to_the_config_keys():
    text = " ".join(invoke("train", "--help").stdout.split())
    assert "docs/cli.md" in text and "bbreprog init" in text and "--dry-run" in text and "--price P" in text
