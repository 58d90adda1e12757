"""What a run does at its edges: a budget too large to bind, retries that end the last step,
a kill during a comparison run, the bill a server should send, and a bug that must not pass
for bad input (issue 19, items 6, 8, 9, 11 and 12)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blackbox_reprog.tools import cli
from blackbox_reprog.run.config import ConfigError, load_config
from blackbox_reprog.run.runner import Run, run
from tests.http_support import Received, Reply, ScriptedServer, v2_answer, v2_inputs
from tests.kill_support import signal_server
from tests.models import signal_model

BBREPROG = str(Path(sys.executable).with_name("bbreprog"))

#: the fast signal pair of the kill test, over HTTP: population 5 × batch 16 = 80 queries a step
SIGNAL = {"seed": 0, "data": {"name": "ItalyPowerDemand"},
          "transform": {"kind": "signal", "grid": 16},
          "label_map": {"kind": "frequency", "per_class": 4},
          "estimator": {"kind": "random", "directions": 4},
          "train": {"batch_size": 16, "eval_every": 5}}


def over_http(url: str, **options) -> dict:
    return {"name": "http", "model": url, "options": {
        "protocol": "v2", "model_name": "sig", "input_shape": [1024], "num_classes": 32,
        "value_range": [-10.0, 10.0], "output_kind": "logits", **options}}


# ---- item 6: a budget that can never bind ---------------------------------------------------------
def test_a_budget_too_large_to_ever_bind_is_refused_in_one_sentence(tmp_path):
    done = subprocess.run([BBREPROG, "demo", "--set", "budget=1e20", "--out", str(tmp_path / "runs"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: expected a budget of at most 1,000,000,000,000 queries (bound a long run with train.max_steps "
        "instead), got 100,000,000,000,000,000,000"]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="at most 1,000,000,000,000"):
        load_config(budget=10**13)


def test_progress_counts_steps_when_max_steps_ends_the_run_before_the_budget():
    config = load_config(base={**SIGNAL, "backend": {"name": "onnx", "model": "crepe-tiny"}})
    bound = Run(load_config(base={**config.to_dict(), "budget": 10**9,
                                  "train": {**SIGNAL["train"], "max_steps": 30}}))
    free = Run(load_config(base={**config.to_dict(), "budget": 2_000,
                                 "train": {**SIGNAL["train"], "max_steps": 30}}))
    try:
        assert bound.components.trainer.bound_by_steps()          # 10⁹ queries pay for far more than 30 steps
        assert not free.components.trainer.bound_by_steps()       # 2,000 pay for fewer: the budget binds
    finally:
        bound.components.backend.close()
        free.components.backend.close()


# ---- item 8: retries end a step; the step before is still validated -------------------------------
def test_when_retries_end_a_step_the_last_finished_step_is_still_validated(tmp_path):
    """The budget pays for three steps, two validations and nothing more: the third step's
    first attempt meets a 500, its retry does not fit. What is left pays for validating the
    second step, which no periodic validation had covered."""
    posts = []

    def model(request: Received) -> Reply:
        posts.append(request)
        if len(posts) == 6:               # probe, label map, validation of θ = 0, step 1, step 2, step 3
            return Reply(500, {"retry-after-ms": "1"}, b"overloaded")
        return Reply(body=v2_answer(signal_model(v2_inputs(request).astype(np.float32))))

    with ScriptedServer([model]) as server:
        backend = over_http(server.url, max_batch=4096, retries=1)
        sizing = Run(load_config(base={**SIGNAL, "backend": backend}))
        t = sizing.components.trainer
        sizing.components.backend.close()
        budget = t.probe_cost + t.map_cost + 2 * t.validation_cost + 3 * t.step_cost
        posts.clear()
        run_dir, result = run(load_config(base={**SIGNAL, "backend": backend, "budget": budget}),
                              run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result["stopped"] == "budget, retries included" and result["steps"] == 2
    assert rows[-1]["step"] == 2 and rows[-1]["validated_after"] == "retries" and "val_loss" in rows[-1]
    assert result["queries"]["validate"] == 2 * t.validation_cost       # θ = 0, then step 2
    assert result["budgeted_queries"] == budget                          # every query paid for was used
    assert result["best_step"] in (0, 2)


# ---- item 9: the bill a server should send ---------------------------------------------------------
def test_result_json_holds_what_the_server_bills(tmp_path):
    with signal_server(idempotent=False) as server:
        _, result = run(load_config(base={**SIGNAL, "budget": 2000, "backend": over_http(server.url)}),
                        run_dir=tmp_path / "run")
        billed = server.billing()["billed"]
    bill = result["billing"]
    assert bill["possibly_billed"] == billed                          # test pass included
    assert bill["read_back_not_bought"] == result["journal"]["answers_from_store"]   # repeats: never bought again
    assert bill["bought_by_earlier_processes"] == bill["earlier_attempts"] == 0        # one process
    assert bill["sent_by_this_process"] + bill["retried_by_this_process"] == billed


# ---- item 11: a kill during the comparison keeps the main result ------------------------------------
@pytest.mark.slow
def test_a_kill_during_the_comparison_keeps_the_main_result_and_resume_finishes_it(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('budget = 6000\nseed = 0\nname = "cmp"\n'
                      '[backend]\nname = "onnx"\nmodel = "crepe-tiny"\n'
                      '[data]\nname = "ItalyPowerDemand"\n[transform]\nkind = "signal"\ngrid = 16\n'
                      '[label_map]\nkind = "frequency"\nper_class = 4\n'
                      '[estimator]\nkind = "random"\ndirections = 4\n'
                      '[evolution]\noptimizer = "DiagonalCMA"\npopsize = 8\n'
                      '[train]\nbatch_size = 16\neval_every = 5\ncompare_with = "evolution"\n')
    run_dir = tmp_path / "runs" / "cmp"
    process = subprocess.Popen([BBREPROG, "train", str(config), "--out", str(tmp_path / "runs"), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "compare-evolution" / "metrics.jsonl").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()

    written = json.loads((run_dir / "result.json").read_text())       # the paid-for program is recorded
    assert written["comparison_pending"] == {"method": "evolution", "run_dir": "compare-evolution"}
    assert 0 <= written["test_accuracy"] <= 1 and written["ledger"]["total"]["queries"] > 0
    assert "comparison" not in written

    done = subprocess.run([BBREPROG, "resume", str(run_dir), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    finished = json.loads((run_dir / "result.json").read_text())
    assert "comparison_pending" not in finished
    assert finished["comparison"]["method"] == "evolution" and 0 < finished["comparison"]["steps"] <= written["steps"]
    assert {k: finished[k] for k in ("test_accuracy", "ledger")} == {k: written[k] for k in ("test_accuracy", "ledger")}
    assert "evolution with the same seed" in done.stdout


# ---- item 12: a bug is not bad input ---------------------------------------------------------------
def test_a_bug_inside_the_toolkit_exits_1_with_its_traceback_not_2(tmp_path, monkeypatch):
    """A ValueError from the toolkit's own code (not a Refusal) is a bug: exit 1 and the
    traceback, never the one-sentence exit 2 that tells the user their input is bad."""
    from blackbox_reprog.run import runner

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(runner, "build_parts", broken)
    outcome = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "runs"), "--quiet"])
    assert outcome.exit_code == 1
    assert isinstance(outcome.exception, ValueError) and "internal invariant" in str(outcome.exception)
    assert outcome.exc_info[2] is not None                               # the traceback reaches the user


def test_a_refusal_still_exits_2_in_one_sentence(tmp_path):
    outcome = CliRunner().invoke(cli.main, ["demo", "--set", "estimator.kind=nope", "--out", str(tmp_path / "runs")])
    assert outcome.exit_code == 2
    assert outcome.output.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "runs").exists()
