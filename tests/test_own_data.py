"""Your own data, as a new user brings them (issue 21): .csv and .tsv files with or without a
header and with words as labels, arrays saved under scikit-learn's names, grey images saved
(N, H, W), series resampled to one length, and ``predict`` on labelled files and class folders.

Every file is a real file written to tmp_path. Runs use the callable test model
(``tests.models:signal_model``, series of up to 1,024 samples), a few seconds each.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blackbox_reprog.tools.cli import main
from blackbox_reprog.data import DataError, load, make_splits, resample
from blackbox_reprog.tools.predict import read_labelled_inputs
from tests.models import CALLS, reset_calls

SERIES = {"backend.name": "callable", "backend.model": "tests.models:signal_model",
          "backend.options": "{input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}",
          "train.batch_size": 8, "estimator.directions": 2, "label_map.per_class": 2}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def invoke(*args):
    reset_calls()
    return CliRunner().invoke(main, [str(a) for a in args])


def sets(values: dict) -> list[str]:
    return [a for key, value in values.items() for a in ("--set", f"{key}={value}")]


def tones(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n noisy tones of 24 samples, half 'low' (a period of 12 samples), half 'high' (6)."""
    rng = np.random.default_rng(seed)
    high = rng.permutation(n) % 2 == 1
    period = np.where(high, 6.0, 12.0)[:, None]
    x = np.sin(2 * np.pi * np.arange(24) / period) + 0.3 * rng.normal(size=(n, 24))
    return x.round(4), ["high" if h else "low" for h in high]


def write_csv(path: Path, x: np.ndarray, labels: list, header: list[str] | None = None,
              delimiter: str = ",") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows([label, *map(repr, row)] for label, row in zip(labels, x.tolist()))
    return write(path, buffer.getvalue())


# --------------------------------------------------------------------------- text files

def test_a_csv_pair_with_a_header_and_words_as_labels(tmp_path):
    x_train, y_train = tones(20, seed=0)
    x_test, y_test = tones(6, seed=1)
    header = ["label"] + [f"t{i}" for i in range(1, 25)]
    write_csv(tmp_path / "waves_train.csv", x_train, y_train, header)
    write_csv(tmp_path / "waves_test.csv", x_test, y_test, header)
    train, test = load(str(tmp_path / "waves_train.csv"))
    assert train.name == "waves" and train.classes == ("high", "low")         # sorted, as any word labels
    np.testing.assert_array_equal(train.x, x_train.astype(np.float32))        # the header is not an example
    assert [train.classes[i] for i in train.y] == y_train
    assert [test.classes[i] for i in test.y] == y_test and test.x.shape == (6, 24)


def test_a_tsv_without_header_and_labels_with_spaces(tmp_path):
    write(tmp_path / "cats.tsv", "big cat\t1\t2\t3\n\nsmall cat\t4\t5\t6\nbig cat\t7\t8\t9\t\n")
    train, test = load(str(tmp_path / "cats.tsv"))
    assert test is None and train.classes == ("big cat", "small cat")
    np.testing.assert_array_equal(train.x, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])   # a closing tab is ignored
    np.testing.assert_array_equal(train.y, [0, 1, 0])


@pytest.mark.parametrize("text, classes, first", [
    ("label,1,2\n1,0.5,0.6\n2,0.7,0.8\n", ("1", "2"), [0.5, 0.6]),            # numbered columns above numbers
    ("cat,1,2\ndog,0.5,0.6\n", ("cat", "dog"), [1, 2]),                      # a word label above word labels
    ("label,t1,t2\ncat,0.5,0.6\ndog,0.7,0.8\n", ("cat", "dog"), [0.5, 0.6]),  # named columns
    ("1.0,0.5,0.6\n2,0.7,0.8\n01,0,0\n", ("1", "2"), [0.5, 0.6]),            # '1.0' and '01' are class '1'
])
def test_a_header_is_told_from_data(tmp_path, text, classes, first):
    train, _ = load(str(write(tmp_path / "h.csv", text)))
    assert train.classes == classes
    np.testing.assert_array_equal(train.x[0], np.float32(first))


@pytest.mark.parametrize("text, message", [
    ("label,a,b\n\ncat,1,2\ndog,3\n", "expected a value in row 4, column 3 of bad.csv (row 3 has 3 columns), "
                                      "got the end of the row"),
    ("cat,1,2\ndog,3,4,5\n", "expected row 2 of bad.csv to end at column 3, as row 1 does, got a value in column 4: '5'"),
    ("cat,1,2\ndog,3,x\n", "expected a number in row 2, column 3 of bad.csv, got 'x'"),
    ("cat,1,2\ndog,,4\n", "expected a number in row 2, column 2 of bad.csv, got an empty field"),
    ("cat,1,2\n,3,4\n", "expected a label in row 2, column 1 of bad.csv, got an empty field"),
    ("label,a,b\n1,1,2\nNaN,3,4\n", "expected a finite number as the label in row 3, column 1 of bad.csv, got 'NaN'"),
    ("1,1e999999,2\n2,3,4\n", "expected only finite values in the training set of 'bad', got 1 NaN or infinite values"),
])
def test_a_bad_row_is_named_by_its_row_and_column_from_1(tmp_path, text, message):
    with pytest.raises(DataError) as error:
        load(str(write(tmp_path / "bad.csv", text)))
    assert str(error.value) == message


def test_the_word_nan_is_a_class_among_word_labels(tmp_path):
    train, _ = load(str(write(tmp_path / "nan.csv", "nan,1,2\ncat,3,4\n")))
    assert train.classes == ("cat", "nan")


# --------------------------------------------------------------------------- arrays as people save them

def test_npz_under_scikit_learns_names(tmp_path):
    x = np.arange(16.0).reshape(4, 4)
    np.savez(tmp_path / "split.npz", X_train=x, y_train=[0, 1, 0, 1], X_test=x[:2] + 100, y_test=[1, 0])
    train, test = load(str(tmp_path / "split.npz"))
    np.testing.assert_array_equal(test.x, x[:2] + 100)
    np.testing.assert_array_equal(test.y, [1, 0])
    np.savez(tmp_path / "one.npz", X=x, y=["a", "b", "a", "b"])
    train, test = load(str(tmp_path / "one.npz"))
    assert test is None and train.classes == ("a", "b")
    np.testing.assert_array_equal(train.x, x)


def test_grey_images_saved_without_a_channel_axis_and_series_with_one(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[:, 3, 5] = 255
    np.savez(tmp_path / "mnist.npz", x=images, y=[0, 1, 0, 1])
    train, _ = load(str(tmp_path / "mnist.npz"))
    assert train.x.shape == (4, 1, 28, 28) and train.x[:, 0, 3, 5].tolist() == [1.0] * 4 and train.x.sum() == 4
    np.savez(tmp_path / "aeon.npz", x=np.arange(12.0).reshape(3, 1, 4), y=[0, 1, 1])
    train, _ = load(str(tmp_path / "aeon.npz"))
    np.testing.assert_array_equal(train.x, np.arange(12.0).reshape(3, 4))
    np.savez(tmp_path / "narrow.npz", x=np.zeros((4, 28, 7)), y=[0, 1, 0, 1])   # 7 < 8: not images
    with pytest.raises(DataError, match=r"got float64 of shape \(4, 28, 7\) \(a 3-D x is read as"):
        load(str(tmp_path / "narrow.npz"))


# --------------------------------------------------------------------------- resampling

def test_resample_interpolates_linearly_between_the_first_and_last_values():
    x = np.array([[0.0, 10.0, 20.0, 30.0], [1.0, 1.0, 5.0, 5.0]], dtype=np.float32)    # (2, 4)
    np.testing.assert_allclose(resample(x, 7), [[0, 5, 10, 15, 20, 25, 30], [1, 1, 1, 3, 5, 5, 5]])
    np.testing.assert_allclose(resample(x, 3), [[0, 15, 30], [1, 3, 5]])
    np.testing.assert_allclose(resample(x, 1), [[0], [1]])
    assert resample(x, 7).dtype == np.float32 and resample(np.arange(3), 5).dtype == np.float64
    stacked = np.stack([x, 2 * x], axis=1)                                               # (2, 2, 4)
    np.testing.assert_allclose(resample(stacked, 7)[:, 1], 2 * resample(x, 7), rtol=1e-6)  # the last axis only
    np.testing.assert_array_equal(resample(np.full((2, 1), 3.0), 4), np.full((2, 4), 3.0))
    with pytest.raises(DataError, match="expected a length of at least 1 to resample series to, got 0"):
        resample(x, 0)


def test_make_splits_resamples_every_split_and_splits_as_before(tmp_path):
    x = np.repeat(np.arange(60.0)[:, None], 1460, axis=1) + np.linspace(0, 1, 1460)   # (60, 1460), row i from i
    np.savez(tmp_path / "long.npz", x=x, y=np.arange(60) % 3)
    plain = make_splits(str(tmp_path / "long.npz"), seed=2)
    short = make_splits(str(tmp_path / "long.npz"), seed=2, length=512)
    for before, after in zip((plain.train, plain.validation, plain.test), (short.train, short.validation, short.test)):
        assert after.x.shape == (len(before), 512) and after.x.dtype == np.float32
        np.testing.assert_array_equal(after.y, before.y)
        np.testing.assert_allclose(after.x[:, 0], before.x[:, 0])            # the same examples, ends kept
        np.testing.assert_allclose(after.x[:, -1], before.x[:, -1])
        np.testing.assert_allclose(after.x, resample(before.x, 512))
    with pytest.raises(DataError, match=r"expected series to resample to length 16, got images of shape \(1, 8, 8\)"):
        make_splits("digits", length=16)
    with pytest.raises(ValueError, match="expected length 0 .series as they are. or a positive number"):
        make_splits(str(tmp_path / "long.npz"), length=-1)


# --------------------------------------------------------------------------- predict on labelled data

@pytest.fixture(scope="module")
def waves(tmp_path_factory) -> dict:
    """A run trained on waves_TRAIN.csv (a header, word labels), its test half beside it."""
    folder = tmp_path_factory.mktemp("waves")
    header = ["label"] + [f"t{i}" for i in range(1, 25)]
    write_csv(folder / "waves_TRAIN.csv", *tones(40, seed=0), header)
    x_test, y_test = tones(30, seed=1)
    write_csv(folder / "waves_TEST.csv", x_test, y_test, header)
    result = invoke("demo", "--quiet", "--out", folder / "runs", "--budget", 2000,
                    *sets({**SERIES, "data.name": folder / "waves_TRAIN.csv", "name": "waves"}))
    assert result.exit_code == 0, result.output
    return {"folder": folder, "run": folder / "runs" / "waves", "y_test": y_test,
            "result": json.loads((folder / "runs" / "waves" / "result.json").read_text())}


def test_train_and_evaluate_read_the_csv(waves):
    data = waves["result"]["data"]
    assert data["name"] == str(waves["folder"] / "waves_TRAIN.csv")
    assert (data["train"] + data["validation"], data["test"], data["classes"]) == (40, 30, 2)     # the official test
    evaluated = invoke("evaluate", waves["run"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["examples"] == 30 and report["test_accuracy"] == pytest.approx(waves["result"]["test_accuracy"])


def test_predict_on_the_labelled_test_file_scores_it_as_the_run_did(waves, tmp_path):
    out = tmp_path / "p.csv"
    result = invoke("predict", waves["run"], waves["folder"] / "waves_TEST.csv", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["input", "label", "score", "probability", "true_label"]
    assert [r["true_label"] for r in rows] == waves["y_test"] and len(rows) == 30 and CALLS["examples"] == 30
    correct = sum(r["label"] == r["true_label"] for r in rows)
    assert correct / 30 == pytest.approx(waves["result"]["test_accuracy"])       # the run's own test pass
    assert result.stdout == (f"30 predictions written to {out}; 30 queries spent; accuracy {correct / 30:.3f} "
                             f"({correct} of 30) against the inputs' labels\n")
    result = invoke("predict", waves["run"], waves["folder"] / "waves_TEST.csv", "-o", tmp_path / "p.json")
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["correct"] == correct and report["accuracy"] == pytest.approx(correct / 30)
    assert [p["true_label"] for p in report["predictions"]] == waves["y_test"]


def test_predict_on_unlabelled_series_with_a_header_has_no_true_label(waves, tmp_path):
    x, _ = tones(3, seed=5)
    header = ",".join(f"t{i}" for i in range(1, 25))
    write(tmp_path / "new.csv", header + "\n" + "\n".join(",".join(map(repr, row)) for row in x.tolist()) + "\n")
    result = invoke("predict", waves["run"], tmp_path / "new.csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "input,label,score,probability" and len(result.stdout.splitlines()) == 4
    assert result.stderr == "3 queries spent\n"


def test_predict_refuses_a_label_that_is_no_class_before_any_query(waves, tmp_path):
    x, y = tones(4, seed=6)
    write_csv(tmp_path / "typo.csv", x, y[:3] + ["hihg"])
    result = invoke("predict", waves["run"], tmp_path / "typo.csv")
    assert result.exit_code == 2 and CALLS["examples"] == 0
    assert result.stderr == ("error: expected one of the run's classes (high, low) as the label in row 4, column 1 "
                             "of typo.csv, got 'hihg'\n")


def test_predict_on_a_ucr_txt_with_its_label_column(tmp_path):
    """The issue's case: `bbreprog predict RUN X_TEST.txt` read the label as a value (25 for 24)."""
    result = invoke("demo", "--quiet", "--out", tmp_path / "runs", "--budget", 2000, *sets({**SERIES, "name": "italy"}))
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "italy"
    _, test = load("ItalyPowerDemand")
    labels = np.array([float(test.classes[i]) for i in test.y])            # 1.0 and 2.0, as the UCR files write them
    np.savetxt(tmp_path / "Italy_TEST.txt", np.column_stack([labels, test.x]), fmt="%.7e")
    result = invoke("predict", run, tmp_path / "Italy_TEST.txt", "-o", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "p.json").read_text())
    test_accuracy = json.loads((run / "result.json").read_text())["test_accuracy"]
    assert report["queries"] == len(test) and report["accuracy"] == pytest.approx(test_accuracy)
    assert [p["true_label"] for p in report["predictions"]] == [test.classes[i] for i in test.y]


# --------------------------------------------------------------------------- predict on a class folder

def class_folder(root: Path) -> Path:
    from PIL import Image
    for label, count in (("cat", 3), ("dog", 2)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (10, 12), 40 * i + (0 if label == "cat" else 200)).save(root / label / f"{i}.png")
    return root


def test_predict_reads_every_image_of_a_class_folder_named_by_its_path(tmp_path):
    root = class_folder(tmp_path / "pets")
    found = read_labelled_inputs([root], (1, 12, 10), ["cat", "dog"])
    assert found.names == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert found.labels == ["cat", "cat", "cat", "dog", "dog"] and found.x.shape == (5, 1, 12, 10)
    np.testing.assert_allclose(found.x[:, 0, 0, 0], np.array([0, 40, 80, 200, 240]) / 255)
    other = read_labelled_inputs([root], (1, 6, 5), ["bird", "cat"])       # not all the run's classes: no labels
    assert other.labels is None and other.x.shape == (5, 1, 6, 5) and other.names == found.names


def test_inputs_of_a_resampled_run_are_resampled_too(tmp_path):
    """A run trained with data.length: any length of series is read, resampled to the program's."""
    x = np.linspace(0, 1, 48)[None].repeat(3, axis=0)                        # (3, 48)
    write_csv(tmp_path / "long.csv", x, ["low", "high", "low"])
    found = read_labelled_inputs([tmp_path / "long.csv"], (24,), ["high", "low"], resampled=True)
    assert found.labels == ["low", "high", "low"] and found.x.shape == (3, 24)
    np.testing.assert_allclose(found.x, resample(x, 24), rtol=1e-6)
    np.save(tmp_path / "long.npy", x)
    found = read_labelled_inputs([tmp_path / "long.npy"], (24,), ["high", "low"], resampled=True)
    assert found.labels is None and found.x.shape == (3, 24)
    found = read_labelled_inputs([tmp_path / "long.npy"], (24,), ["high", "low"])           # a run that did not
    assert found.x.shape == (3, 48)


def test_data_length_resamples_series_longer_than_the_model_takes(tmp_path):
    """Series of 1,500 points on a model that takes 1,024: refused, with the option that fixes it;
    trained with data.length=512, every split is resampled and the program records 512."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 1500)
    x = np.stack([np.sin(2 * np.pi * (3 + 4 * (i % 2)) * t) + 0.1 * rng.standard_normal(1500) for i in range(40)])
    write_csv(tmp_path / "long.csv", x, ["slow" if i % 2 == 0 else "fast" for i in range(40)])
    common = ["demo", "--budget", "2000", "--out", str(tmp_path / "runs"), "--quiet",
              "--set", f"data.name={tmp_path / 'long.csv'}", "--set", "label_map.per_class=2"]
    refused = CliRunner().invoke(main, common)
    assert refused.exit_code == 2 and "expected series of at most 1024 samples, got 1500 (resample them with --set data.length=1024)" in refused.stderr
    done = CliRunner().invoke(main, [*common, "--set", "data.length=512", "--set", "train.max_steps=1"])
    assert done.exit_code == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    import torch
    assert torch.load(run_dir / "program.pt", weights_only=True)["target_shape"] == [512]
    assert "length = 512" in (run_dir / "config.toml").read_text()
