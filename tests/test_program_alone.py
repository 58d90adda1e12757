"""A finished program loads from its run folder alone: predict and evaluate need the model,
not the training data (issue 20, item 3)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blackbox_reprog.run.config import load_config
from blackbox_reprog.data import make_splits
from blackbox_reprog.errors import Refusal
from blackbox_reprog.run.program import Program
from blackbox_reprog.run.runner import run

BBREPROG = str(Path(sys.executable).with_name("bbreprog"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short run on ItalyPowerDemand copied into an .npz of the user's, which is then deleted."""
    folder = tmp_path_factory.mktemp("alone")
    splits = make_splits("ItalyPowerDemand", validation_fraction=0.25, seed=0)
    data = folder / "mine.npz"
    np.savez(data, x_train=np.concatenate([splits.train.x, splits.validation.x]),
             y_train=np.concatenate([splits.train.y, splits.validation.y]), x_test=splits.test.x, y_test=splits.test.y)
    config = load_config(base={"budget": 3000, "seed": 0, "backend": {"name": "onnx", "model": "crepe-tiny"},
                               "data": {"name": str(data)}, "transform": {"kind": "signal", "grid": 16},
                               "label_map": {"kind": "frequency", "per_class": 4},
                               "estimator": {"kind": "random", "directions": 4},
                               "train": {"batch_size": 16, "eval_every": 5}})
    run_dir, result = run(config, run_dir=folder / "run")
    inputs = folder / "new.npy"
    np.save(inputs, splits.test.x[:7])
    data.unlink()                                        # the training data are gone
    return run_dir, inputs, splits


def test_predict_works_after_the_training_data_are_deleted(finished, tmp_path):
    run_dir, inputs, _ = finished
    out = tmp_path / "labels.csv"
    done = subprocess.run([BBREPROG, "predict", str(run_dir), str(inputs), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 8 and rows[0].startswith("input,label")       # a header and the 7 inputs


def test_program_pt_records_what_rebuilding_needs(finished):
    run_dir, _, _ = finished
    saved = torch.load(run_dir / "program.pt", weights_only=True)
    assert saved["format"] == 3 and saved["target_shape"] == [24] and saved["seed"] == 0
    assert saved["model"]["num_classes"] == 360 and saved["model"]["input_shape"] == [1024]
    assert saved["classes"] == ["0", "1"]                   # the .npz held class indices
    assert saved["components"] == {"transform": {"kind": "signal", "grid": 16, "scale": 1.0, "subspace": 0},
                                   "label_map": {"kind": "frequency", "per_class": 4}}


def test_program_pt_alone_rebuilds_the_program(finished, tmp_path):
    # no config.toml, no data, no backend: the same transform and map, scoring the same answers alike
    run_dir, _, splits = finished
    (tmp_path / "program.pt").write_bytes((run_dir / "program.pt").read_bytes())
    alone, whole = Program.load(tmp_path), Program.load(run_dir)
    assert alone.config is None and alone.backend is None
    assert alone.transform.num_params == 16 and alone.classes == ["0", "1"]
    x = torch.as_tensor(splits.test.x[:5])
    assert torch.equal(alone.transform(alone.theta[None], x), whole.transform(whole.theta[None], x))
    answers = torch.log_softmax(torch.randn(5, 360, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(alone.label_map(answers), whole.label_map(answers))
    with pytest.raises(Refusal, match="expected --data naming a dataset, got none and no config.toml"):
        alone.evaluate()


A0CAEF1 = Path(__file__).parent / "fixtures" / "run_a0caef1"


def test_a_run_folder_written_by_a0caef1_still_evaluates_predicts_and_reports(tmp_path):
    # written by blackbox-reprog at commit a0caef1: config.toml lists every kind's parameters,
    # program.pt is format 1 (θ, map, classes); result.json describes the model
    folder = tmp_path / "old"
    shutil.copytree(A0CAEF1, folder)
    recorded = json.loads((folder / "result.json").read_text())
    done = subprocess.run([BBREPROG, "evaluate", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(done.stdout)
    assert evaluated["test_accuracy"] == pytest.approx(recorded["test_accuracy"], abs=1e-4)   # printed to 4 places
    assert evaluated["examples"] == recorded["data"]["test"]
    splits = make_splits("ItalyPowerDemand", validation_fraction=0.25, seed=0)
    inputs = tmp_path / "new.npy"
    np.save(inputs, splits.test.x[:5])
    done = subprocess.run([BBREPROG, "predict", str(folder), str(inputs)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 6
    done = subprocess.run([BBREPROG, "report", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "frequency (per_class 4)" in (folder / "report.md").read_text()


def test_a_program_written_before_format_2_without_its_data_is_refused_naming_the_version(finished, tmp_path):
    run_dir, inputs, _ = finished
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text((run_dir / "config.toml").read_text())
    saved = torch.load(run_dir / "program.pt", weights_only=True)
    torch.save({k: saved[k] for k in ("theta", "label_map", "classes")}, old / "program.pt")   # format 1
    done = subprocess.run([BBREPROG, "predict", str(old), str(inputs)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "written by blackbox-reprog 0.1 and does not record its target shape" in line
    assert json.loads((run_dir / "result.json").read_text())["steps"] > 0
