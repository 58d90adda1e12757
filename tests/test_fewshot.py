"""Few labels per class and stingy answers (issue 22): ``data.shots`` draws exactly that many
labelled examples per class and validates on them; the linear head chooses its L2 penalty by
cross-validation; a suite's ``shots`` and ``answers`` axes run and their table shows them;
Fashion-MNIST is used when Debian's package is there and skipped, saying how to get it, when not."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from blackbox_reprog.bench import Cell, SuiteError, load_suite, restricted
from blackbox_reprog.data import FASHION_MNIST, DataError, load, make_splits
from blackbox_reprog.data.splits import TooFewShots, held_out_shots
from blackbox_reprog.errors import Refusal
from blackbox_reprog.program.label_maps import LABEL_MAPS
from blackbox_reprog.run.config import load_config
from blackbox_reprog.tools.cli import main


# ------------------------------------------------------------------------------------ data.shots
@pytest.mark.parametrize("shots, train, validation", [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (16, 12, 4)])
def test_shots_are_exact_per_class_and_validation_comes_out_of_them(shots, train, validation):
    whole, official_test = load("GunPoint")
    splits = make_splits("GunPoint", shots=shots, seed=3, validation_fraction=0.25)
    assert list(np.bincount(splits.train.y)) == [train, train]
    if validation:
        assert list(np.bincount(splits.validation.y)) == [validation, validation]
        labelled = np.concatenate([splits.train.x, splits.validation.x])
        assert not {row.tobytes() for row in splits.train.x} & {row.tobytes() for row in splits.validation.x}
    else:                                       # 1 or 2 shots: nothing to spare, the training shots validate
        assert splits.validation is splits.train
        labelled = splits.train.x
    assert {row.tobytes() for row in labelled} <= {row.tobytes() for row in whole.x}    # from the train part
    assert len(splits.test) == len(official_test)                                       # the test split stays whole
    assert held_out_shots(shots, 0.25) == validation


def test_shots_are_seeded_and_nested():
    def train_rows(shots, seed):
        return {row.tobytes() for row in make_splits("ItalyPowerDemand", shots=shots, seed=seed).train.x}
    assert train_rows(4, 0) == train_rows(4, 0) and train_rows(4, 0) != train_rows(4, 1)
    assert train_rows(1, 0) <= train_rows(4, 0) <= train_rows(16, 0)     # more labels add to the fewer


def test_a_carved_test_split_is_the_same_at_every_number_of_shots():
    tests = [make_splits("digits", shots=shots, seed=1).test for shots in (0, 1, 16)]
    assert all(np.array_equal(t.x, tests[0].x) for t in tests)
    assert list(np.bincount(make_splits("digits", shots=16, seed=1).train.y)) == [13] * 10     # 16 − 3 validate


def test_shots_from_the_config_and_too_many_shots_name_the_poorest_class():
    config = load_config(overrides=("data.name=UnitTest", "data.shots=4"))
    assert config.data.shots == 4 and list(np.bincount(config.data.splits(0).train.y)) == [3, 3]
    assert load_config().data.shots == 0                                  # 0: every example, as before
    with pytest.raises(TooFewShots) as error:
        make_splits("Coffee", shots=16)
    assert str(error.value) == "expected at least 16 training examples of every class of 'Coffee' for 16 shots, got 14 of class '0'"
    assert isinstance(error.value, DataError)
    with pytest.raises(Refusal, match="expected shots 0 .every example. or a positive number of examples per class, got -1"):
        make_splits("Coffee", shots=-1)


# ----------------------------------------------------------------- the linear head's L2 by CV
def answers(per_class: int, signal: float, noise: float, seed: int, source: int = 50, target: int = 3):
    """Log-probabilities of ``per_class`` examples per class: class centres × signal + noise."""
    centres = torch.randn(target, source, generator=torch.Generator().manual_seed(99))
    y = torch.arange(target).repeat_interleave(per_class)
    scores = signal * centres[y] + noise * torch.randn(len(y), source, generator=torch.Generator().manual_seed(seed))
    return torch.log_softmax(scores, dim=1), y


def test_cross_validation_penalises_few_noisy_examples_more_than_many_clean_ones():
    for seed in range(3):
        few_noisy = LABEL_MAPS.make("linear", 50, 3, cv_folds=5).fit(*answers(2, 0.3, 2.0, seed))
        many_clean = LABEL_MAPS.make("linear", 50, 3, cv_folds=5).fit(*answers(100, 3.0, 0.5, seed))
        assert few_noisy.penalty >= 0.1 and many_clean.penalty <= 1e-3, (few_noisy.penalty, many_clean.penalty)
    log_probs, y = answers(100, 3.0, 0.5, 0)
    cross_validated = LABEL_MAPS.make("linear", 50, 3, cv_folds=5).fit(log_probs, y)
    assert cross_validated.state_dict()["penalty"] == pytest.approx(cross_validated.penalty)
    rebuilt = LABEL_MAPS.make("linear", 50, 3, cv_folds=5)
    rebuilt.load_state_dict(cross_validated.state_dict())
    assert rebuilt.penalty == cross_validated.penalty and "by 5-fold cross-validation" in rebuilt.explain(["a"] * 3)[0]
    assert LABEL_MAPS.make("linear", 50, 3, l2=0.5).fit(log_probs, y).penalty == 0.5      # cv_folds 0: l2 as given


def test_one_fold_is_refused_and_the_config_takes_cv_folds():
    with pytest.raises(Refusal, match="expected label_map.cv_folds 0 .the penalty l2 as given. or at least 2, got 1"):
        LABEL_MAPS.make("linear", 50, 3, cv_folds=1)
    assert load_config(overrides=("label_map.kind=linear", "label_map.cv_folds=5")).label_map.cv_folds == 5


def label_answers(top1: list[int], source: int = 40) -> torch.Tensor:
    """Label-only answers as backends/outputs.py makes them: 1 − ε on the top-1, ε/(C − 1) elsewhere."""
    probs = torch.full((len(top1), source), 0.1 / (source - 1))
    probs[torch.arange(len(top1)), torch.tensor(top1)] = 0.9
    return probs.log()


@pytest.mark.parametrize("kind", ["linear", "knn"])
def test_a_label_never_seen_in_training_reads_as_no_evidence(kind):
    # with labels only, most source classes never answer for a training example; one that then
    # answers for a test example must not weigh as its rounding noise divided by a floor
    options = {"neighbours": 1} if kind == "knn" else {}
    fitted = LABEL_MAPS.make(kind, 40, 2, **options).fit(label_answers([5, 5, 6, 8, 9, 9]), torch.tensor([0, 0, 0, 1, 1, 1]))
    unseen = fitted(label_answers([20, 30]))
    assert unseen.abs().max() < 10 and torch.allclose(unseen[0], unseen[1])      # the same, bounded scores
    assert fitted(label_answers([5, 9])).argmax(1).tolist() == [0, 1]             # the seen ones still count


# --------------------------------------------------------------------- the shots and answers axes
TINY = """
name = "tiny-fewshot"
budgets = [300]
seeds = [0]
shots = [1, 3, 11]                   # UnitTest has 10 training examples a class: 11 shots are n/a
answers = ["scores", "label"]

[base]
backend = { name = "onnx", model = "crepe-tiny" }
data = { name = "UnitTest" }
transform = { kind = "signal", grid = 8 }
label_map = { kind = "frequency", per_class = 2 }
estimator = { kind = "random", directions = 2, smoothing = 0.01 }
train = { batch_size = 4, eval_every = 5 }

[pairs.UnitTest]
data.name = "UnitTest"

[methods.linear-head]
label = "linear head, L2 by CV"
baseline = "zero"
label_map = { kind = "linear", cv_folds = 3 }

[methods.blm-plus]
label = "BLM+"
baseline = "zero"
label_map.kind = "blm+"

[methods.scratch]
label = "from scratch"
baseline = "scratch"

[methods.zo]
label = "ZO"
"""


def test_a_suite_with_shots_and_answers_makes_a_cell_per_shots_and_answers(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    suite = load_suite(tmp_path / "tiny.toml")
    assert suite.shots == (1, 3, 11) and suite.answers == ("scores", "label")
    ids = [cell.id for cell in suite.cells()]
    # the network trained from scratch sends no query: one cell per shots, not per answers
    assert len(ids) == 3 * 2 * 3 + 3 and "UnitTest/scratch/any-shots1-s0" in ids
    assert "UnitTest/zo/300-shots3-label-s0" in ids and "UnitTest/linear-head/any-shots1-scores-s0" in ids
    config = suite.config(Cell("UnitTest", "zo", 300, 0, shots=3, answers="label"), tmp_path)
    assert (config.data.shots, config.backend.output) == (3, "label")
    top = suite.config(Cell("UnitTest", "zo", 300, 0, shots=0, answers="top5"), tmp_path)
    assert (top.data.shots, top.backend.output, top.backend.k) == (0, "topk", 5)
    assert suite.inapplicable(Cell("UnitTest", "blm-plus", None, 0, shots=1, answers="label")) == \
        "label_map 'blm+' needs scores; label answers have none"
    assert not suite.inapplicable(Cell("UnitTest", "blm-plus", None, 0, shots=1, answers="scores"))
    narrowed = restricted(suite, shots="3", answers="label")
    assert narrowed.shots == (3,) and narrowed.answers == ("label",) and len(narrowed.cells()) == 4
    with pytest.raises(SuiteError, match="expected --shots among 1, 3, 11, got '16'"):
        restricted(suite, shots="16")


@pytest.mark.parametrize("line, message", [
    ('answers = ["top0"]', "expected answers among scores, probs, label or top<k> .e.g. top5., got 'top0'"),
    ('answers = ["scores", "scores"]', "expected answers, a list of distinct kinds of answer"),
    ('shots = [4, -1]', "expected shots, a list of distinct examples per class"),
    ('shots = ["some"]', "expected shots, a list of distinct examples per class"),
])
def test_a_bad_axis_is_refused_before_any_cell(tmp_path, line, message):
    key = line.split(" = ")[0]
    text = "\n".join(other for other in TINY.splitlines() if not other.startswith(f"{key} = "))
    (tmp_path / "bad.toml").write_text(text.replace('seeds = [0]', f'seeds = [0]\n{line}'))
    with pytest.raises(SuiteError, match=message):
        load_suite(tmp_path / "bad.toml")


def test_the_axes_run_and_their_table_shows_shots_by_answers(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["bench", str(tmp_path / "tiny.toml"), "--out", str(out), "--executor", "serial",
                                    "--quiet"])
    assert run.exit_code == 0, (run.output, run.exception)
    assert "UnitTest: a black-box method beat every baseline in" in run.output and "on the zero program" in run.output
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == [1, 3, 11] and results["answers"] == ["scores", "label"]
    done = [c for c in results["cells"] if c["status"] == "done"]
    skipped = {c["id"]: c["reason"] for c in results["cells"] if c["status"] == "skipped"}
    assert len(done) == 12 and len(skipped) == 9
    assert skipped["UnitTest/blm-plus/any-shots3-label-s0"] == "label_map 'blm+' needs scores; label answers have none"
    assert skipped["UnitTest/zo/300-shots11-scores-s0"] == skipped["UnitTest/scratch/any-shots11-s0"] == \
        "expected at least 11 training examples of every class of 'UnitTest' for 11 shots, got 10 of class '1'"
    assert all(0 <= c["test_accuracy"] <= 1 for c in done)
    head = next(c for c in done if c["id"] == "UnitTest/linear-head/any-shots3-scores-s0")
    assert head["detail"]["l2"] in LABEL_MAPS.cls("linear").grid and head["queries"] == 4    # 2 train a class
    for by_pair in results["margins"].values():              # against every baseline, and the zero program's
        assert set(by_pair["UnitTest"]) == {f"{n}, {a}" for n in ("1 shot", "3 shots", "11 shots") for a in ("scores", "label")}
        assert by_pair["UnitTest"]["11 shots, scores"] is None                        # nothing ran there
    assert set(results["margins"]) == {"every baseline", "the best map or head on the zero program's answers"}
    table = (out / "results.md").read_text()
    assert "| method | 1 shot, scores | 1 shot, label | 3 shots, scores | 3 shots, label |" in table
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert rows["BLM+"][1] == rows["BLM+"][3] == "n/a" and rows["BLM+"][5] == "n/a |"
    assert rows["from scratch"][0] == rows["from scratch"][1]              # the same cell under each answers
    assert "ZO, 300 q" in rows and "*best black-box − best baseline*" in rows
    assert "*best black-box − best zero-program map or head*" in rows
    assert "- `n/a` in 1 shot, label; 3 shots, label; 11 shots, label: label_map 'blm+' needs scores; label answers have none." in table
    assert rows["ZO, 300 q"][4:] == ["n/a", "n/a |"] and "| not run" not in table
    assert (out / "UnitTest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, ["bench", str(tmp_path / "tiny.toml"), "--out", str(out), "--executor", "serial",
                                      "--quiet"])
    assert again.exit_code == 0 and "12 cells done (0 run now, 12 from an earlier run), 9 skipped" in again.output
    # a cell skipped for its config stays skipped, with its reason, in a report and in a fresh clone
    shutil.rmtree(out / "cells")
    report = CliRunner().invoke(main, ["bench", str(tmp_path / "tiny.toml"), "--out", str(out), "--report"])
    assert report.exit_code == 0 and "12 cells done (0 run now, 12 from an earlier run), 9 skipped" in report.output
    assert "| not run" not in (out / "results.md").read_text()


# ------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_at_few_shots_or_a_skip_that_says_how_to_get_it():
    if not FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed: `make install` as root installs it "
                    "(sudo apt-get install dataset-fashion-mnist)")
    splits = make_splits("fashion_mnist_5k", shots=4, seed=0)
    assert list(np.bincount(splits.train.y)) == [3] * 10 and len(splits.test) == 1000


def test_a_pair_whose_dataset_is_absent_is_skipped_saying_how_to_get_it(tmp_path):
    text = TINY + f"""
[pairs.fashion]
data.name = "fashion_mnist_5k"
requires = "{tmp_path / 'absent'}"
install = "make install as root, or sudo apt-get install dataset-fashion-mnist"
"""
    (tmp_path / "suite.toml").write_text(text)
    suite = load_suite(tmp_path / "suite.toml")
    assert suite.missing(suite.pair("fashion")) == (f"{tmp_path / 'absent'} is absent (make install as root, or "
                                                    "sudo apt-get install dataset-fashion-mnist)")
