"""One dataset file, read by its suffix: .npz, .ts, or a .csv, .tsv or .txt table. A file named
NAME_TRAIN brings its test half, NAME_TEST, from beside it."""
from __future__ import annotations

from pathlib import Path

from .arrays import read_npz
from .dataset import DataError, RawPair
from .tables import TEXT_SUFFIXES, read_labelled_table
from .ts import read_ts


def read_file(path: Path) -> tuple[str, RawPair]:
    """The dataset's name (the file's, less _TRAIN) and its (train, test) halves."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return path.stem, read_npz(path)
    if suffix not in (".ts", *TEXT_SUFFIXES):
        raise DataError(f"expected a .npz, .ts, .csv, .tsv or .txt file or an image folder, got {path.name!r}")
    stem = path.stem
    return (stem[:-6] if stem.upper().endswith("_TRAIN") else stem), read_train_test(path)


def read_train_test(path: Path) -> RawPair:
    """A .ts or text file; when named X_TRAIN.ext, its test half X_TEST.ext is read from beside it."""
    reader = read_ts if path.suffix.lower() == ".ts" else read_labelled_table
    stem = path.stem
    if not stem.upper().endswith("_TRAIN"):
        return reader(path), None
    test_path = path.with_name(stem[:-6] + ("_TEST" if stem[-5:].isupper() else "_test") + path.suffix)
    return reader(path), (reader(test_path) if test_path.exists() else None)
