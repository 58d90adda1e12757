"""From what a reader produces to ``Dataset``s: inputs checked and cast to float32, labels
mapped to class indices 0..K-1."""
from __future__ import annotations

import math

import numpy as np

from .dataset import DataError, Dataset, Raw


def build_datasets(name: str, train: Raw, test: Raw | None) -> tuple[Dataset, Dataset | None]:
    """(train, test) datasets; the test half shares the training half's classes and shape."""
    x_train = _checked_inputs(train[0], f"the training set of {name!r}")
    x_test = _checked_inputs(test[0], f"the test set of {name!r}") if test else None
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"expected test inputs of shape {x_train.shape[1:]} like the training set of "
                        f"{name!r}, got {x_test.shape[1:]}")
    classes, y_train, y_test = _encode_labels(train[1], test[1] if test else None, name)
    if len(classes) < 2:
        raise DataError(f"expected at least two classes in {name!r}, got only {list(classes)}")
    return Dataset(x_train, y_train, classes, name), (Dataset(x_test, y_test, classes, name) if test else None)


def _encode_labels(train: list[str], test: list[str] | None, name: str):
    """Sorted unique train labels (numerically when all are numbers) -> 0..K-1; test uses the same map."""
    train, numeric = canonical_labels(train, f"the training set of {name!r}")
    classes = tuple(sorted(set(train), key=float if numeric else str))
    index = {label: i for i, label in enumerate(classes)}
    y_train = np.array([index[label] for label in train], dtype=np.int64)
    if test is None:
        return classes, y_train, None
    test, _ = canonical_labels(test, f"the test set of {name!r}")
    unseen = sorted(set(test) - index.keys())
    if unseen:
        raise DataError(f"expected every test label to occur in the training set, got unseen labels {unseen[:5]}")
    return classes, y_train, np.array([index[label] for label in test], dtype=np.int64)


def canonical_labels(labels: list[str], where: str) -> tuple[list[str], bool]:
    """Write numeric labels one way, so '1', '1.0' and '1.0000000e+00' are the same class; other
    numbers keep their shortest form ('0.5'). When every label is a number, a NaN or infinite one
    is a missing label, not a class (it would also break the numeric order of the classes).
    Also says whether the labels are numbers."""
    missing = missing_label(labels)
    if missing is not None:
        raise DataError(f"expected a finite number as every label in {where}, got {labels[missing]!r} "
                        f"in row {missing + 1}")
    try:
        values = [float(label) for label in labels]
    except ValueError:
        return labels, False
    return [str(int(v)) if v.is_integer() else repr(v) for v in values], True


def missing_label(labels: list[str]) -> int | None:
    """The position of the first NaN or infinite label when every label is a number, else None."""
    try:
        values = [float(label) for label in labels]
    except ValueError:
        return None                     # names: 'nan' is a name like any other
    return next((i for i, value in enumerate(values) if not math.isfinite(value)), None)


def _checked_inputs(x: np.ndarray, where: str) -> np.ndarray:
    if len(x) == 0 or x.size == 0:
        raise DataError(f"expected at least one non-empty example in {where}, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)  # after the cast, so float64 overflow counts as inf
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise DataError(f"expected only finite values in {where}, got {bad} NaN or infinite values")
    return x
