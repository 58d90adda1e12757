"""The remote path end to end: the demo pair trained over HTTP through the project's own
``serve``, against the same model loaded locally; faults injected; a canary key hunted for."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blackbox_reprog.run.config import load_config
from blackbox_reprog.backends.registry import create_backend
from blackbox_reprog.run.runner import run
from blackbox_reprog.serve import ModelServer

pytestmark = pytest.mark.slow           # full runs over HTTP, minutes in all

BASE = {"budget": 6000, "seed": 0,
        "backend": {"name": "onnx", "model": "crepe-tiny"},
        "data": {"name": "ItalyPowerDemand", "validation_fraction": 0.25},
        "transform": {"kind": "signal", "grid": 64},
        "label_map": {"kind": "iterative", "per_class": 10},
        "estimator": {"kind": "random", "directions": 5, "smoothing": 0.01},
        "optimizer": {"kind": "adam", "lr": 0.3, "schedule": "cosine"},
        # max_steps fixes the schedule's horizon: the remote run pays one extra probe query
        "train": {"batch_size": 16, "eval_every": 5, "max_steps": 40}}


@pytest.fixture(scope="module")
def crepe():
    backend = create_backend("onnx", "crepe-tiny")
    yield backend
    backend.close()


def remote(url: str, crepe, **options) -> dict:
    return {"name": "http", "model": url, "options": {
        "protocol": "v2", "model_name": "crepe-tiny", "input_shape": list(crepe.input_spec.shape),
        "num_classes": crepe.num_classes, "value_range": list(crepe.input_spec.value_range),
        "output_kind": "logits", **options}}


def config_with(**sections):
    return load_config(base={**BASE, **sections})


def program(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "program.pt", weights_only=True)["theta"]


def test_over_http_the_run_is_the_run_against_the_local_model(tmp_path, crepe):
    local_dir, local = run(config_with(), run_dir=tmp_path / "local")
    with ModelServer(crepe, name="crepe-tiny") as server:
        remote_dir, over_http = run(config_with(backend=remote(server.url, crepe)), run_dir=tmp_path / "http")
        billing = server.billing()
    assert torch.equal(program(local_dir), program(remote_dir))       # identical answers, identical θ
    assert over_http["test_accuracy"] == local["test_accuracy"]
    assert over_http["steps"] == local["steps"] == 40
    assert over_http["queries"]["probe"] == 1 and local["queries"]["probe"] == 0
    assert over_http["queries"]["total"] == local["queries"]["total"] + 1
    # the remote run is journaled: a repeated input (the zero program's test pass, when the
    # program chosen is the zero program) is read back from the answer store, not bought
    stored = over_http["journal"]["answers_from_store"]
    assert billing["billed"] == over_http["queries"]["total"] - stored


def test_with_ten_percent_faults_the_run_finishes_within_budget_and_the_bill_matches(tmp_path, crepe):
    with ModelServer(crepe, name="crepe-tiny", fault_rate=0.1, faults=("429", "500", "timeout"),
                     timeout_delay=0.5, retry_after=0.0, seed=3) as server:
        config = config_with(backend=remote(server.url, crepe, read_timeout=0.25, max_batch=32))
        _, summary = run(config, run_dir=tmp_path / "faulty")
        billing = server.billing()
    faults = billing["faults"]
    assert faults["429"] > 0 and faults["500"] > 0 and faults["timeout"] > 0
    assert summary["retried_queries"] > 0
    attempts = summary["queries"]["total"] - summary["journal"]["answers_from_store"] + summary["retried_queries"]
    assert billing["billed"] == attempts                                 # every attempt is in the ledger
    assert summary["budgeted_queries"] <= summary["budget"]


CANARY = "canary-7f3a9c1e-key-never-seen"


def _serve(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, str]:
    bbreprog = str(Path(sys.executable).with_name("bbreprog"))
    process = subprocess.Popen(
        [bbreprog, "serve", "crepe-tiny", "--port", "0", "--api-key-env", "SERVE_KEY",
         "--billing-file", str(tmp_path / "billing.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = process.stdout.readline()
    assert first.startswith("serving crepe-tiny on http://127.0.0.1:"), first
    return process, first.split(" on ")[1].split()[0]


def test_a_canary_key_appears_in_no_output_and_no_file(tmp_path, crepe):
    """A full CLI run (and failing ones) with a canary key: every stdout, stderr and file
    written is searched for it."""
    env = {**os.environ, "SERVE_KEY": CANARY, "VENDOR_KEY": CANARY, "WRONG_KEY": "not-the-key"}
    server, url = _serve(tmp_path, env)
    outputs = []
    try:
        options = remote(url, crepe, key_env="VENDOR_KEY")["options"]
        config = tmp_path / "remote.toml"
        config.write_text(
            'budget = 3000\nseed = 1\nname = "remote"\n'
            f'[backend]\nname = "http"\nmodel = "{url}"\n'
            f'[backend.options]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()) +
            '[data]\nname = "ItalyPowerDemand"\n[transform]\nkind = "signal"\ngrid = 16\n'
            '[label_map]\nkind = "frequency"\nper_class = 4\n[estimator]\nkind = "random"\ndirections = 4\n'
            '[train]\nbatch_size = 16\neval_every = 4\n')
        bbreprog = str(Path(sys.executable).with_name("bbreprog"))
        runs = str(tmp_path / "runs")
        good = subprocess.run([bbreprog, "train", str(config), "--out", runs], capture_output=True, text=True, env=env)
        assert good.returncode == 0, good.stderr
        wrong = subprocess.run([bbreprog, "train", str(config), "--out", runs,
                                "--set", "backend.options.key_env='WRONG_KEY'"], capture_output=True, text=True, env=env)
        assert wrong.returncode == 2 and "HTTP 401" in wrong.stderr
        missing = subprocess.run([bbreprog, "train", str(config), "--out", runs,
                                  "--set", "backend.options.key_env='NO_SUCH_VARIABLE'"], capture_output=True, text=True, env=env)
        assert missing.returncode == 2 and "NO_SUCH_VARIABLE" in missing.stderr
        outputs += [good.stdout, good.stderr, wrong.stdout, wrong.stderr, missing.stdout, missing.stderr]
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        outputs += [out, err]
    billing = json.loads(out.strip().splitlines()[-1])
    assert billing["billed"] > 0 and billing["unauthorized"] >= 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "result.json" for p in files) and any(p.name == "billing.json" for p in files)
    assert [text for text in outputs if CANARY in text] == []
    assert [p for p in files if CANARY.encode() in p.read_bytes()] == []


def test_an_endpoint_that_keeps_failing_ends_the_run_with_exit_code_3(tmp_path, crepe):
    from click.testing import CliRunner

    from blackbox_reprog.tools.cli import main
    # busy on every attempt, and saying so (a 429 with Retry-After): an outage. The same 500 to every
    # attempt of the first call would be a request the endpoint refuses (exit 2, test_http_hostile.py)
    with ModelServer(crepe, name="crepe-tiny", fault_rate=1.0, faults=("429",), retry_after=0.0) as server:
        options = remote(server.url, crepe, retries=1)["options"]
        config = tmp_path / "down.toml"
        config.write_text(f'budget = 3000\nname = "down"\n[backend]\nname = "http"\nmodel = "{server.url}"\n'
                          '[backend.options]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()) +
                          '[data]\nname = "ItalyPowerDemand"\n[transform]\nkind = "signal"\ngrid = 16\n'
                          '[label_map]\nkind = "frequency"\nper_class = 4\n[train]\nbatch_size = 16\n')
        result = CliRunner().invoke(main, ["train", str(config), "--out", str(tmp_path / "runs"), "--quiet"])
        billing = server.billing()
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: the model is unavailable: expected an answer from ")
    assert f"bbreprog resume {tmp_path / 'runs' / 'down'}" in result.stderr and result.stderr.count("\n") == 1
    assert billing["requests"] == 2                     # the probe and its one retry, then nothing more
