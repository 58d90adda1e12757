"""``make_splits``: seeded, stratified train / validation / test splits of a dataset, its series
resampled to one length on request, its labels cut to a few per class on request (``shots``)."""
from __future__ import annotations

import numpy as np

from ..errors import Refusal
from .dataset import DataError, Dataset, Splits
from .loading import load
from .series import resample


class TooFewShots(DataError):
    """A class of the training part has fewer examples than ``shots`` asks for."""


def make_splits(name_or_path: str, *, validation_fraction: float = 0.2,
                test_fraction: float = 0.3, seed: int = 0, length: int = 0, shots: int = 0) -> Splits:
    """Seeded stratified splits: validation from train only; `test_fraction` only if there is no test.
    ``length`` > 0 resamples every series of every split to that many points (0: as they are).
    ``shots`` > 0 keeps that many labelled examples per class of the training part, and the
    validation split comes out of them (``shot_splits``); the test split stays whole."""
    for label, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise Refusal(f"expected {label} strictly between 0 and 1, got {fraction}")
    if length < 0:
        raise Refusal(f"expected length 0 (series as they are) or a positive number of points, got {length}")
    if shots < 0:
        raise Refusal(f"expected shots 0 (every example) or a positive number of examples per class, got {shots}")
    rng = np.random.default_rng(seed)
    train, test = load(name_or_path)
    if length and train.x.ndim != 2:
        raise DataError(f"expected series to resample to length {length}, got images of shape "
                        f"{train.x.shape[1:]} in {train.name!r}")
    official = test is not None
    if test is None:
        train, test = _stratified_split(train, test_fraction, rng)
    if shots:
        train, validation = shot_splits(train, shots, validation_fraction, rng)
    else:
        train, validation = _stratified_split(train, validation_fraction, rng)
    if not (len(train) and len(validation) and len(test)):   # a class needs 2 examples to be split
        raise DataError(f"expected train, validation and test splits of at least one example each from "
                        f"{train.name!r}, got {len(train)}, {len(validation)} and {len(test)}; give some "
                        f"class at least {2 if official else 3} examples")
    if length:
        train, validation, test = (_resampled(part, length) for part in (train, validation, test))
    return Splits(train, validation, test)


def held_out_shots(shots: int, validation_fraction: float) -> int:
    """Of ``shots`` labelled examples of a class, how many validate: about the fraction, at least
    one, never leaving fewer than two to train on; at 1 or 2 shots none."""
    return max(min(max(round(validation_fraction * shots), 1), shots - 2), 0)


def shot_splits(data: Dataset, shots: int, validation_fraction: float,
                rng: np.random.Generator) -> tuple[Dataset, Dataset]:
    """(train, validation): exactly ``shots`` examples of each class, drawn seeded from ``data``,
    of which ``held_out_shots`` per class validate. With none held out (1 or 2 shots) the
    validation split *is* the training shots: a user with one label a class has no other, so
    the program is chosen by its loss on the examples it was trained on.

    Each class's examples are drawn in one seeded order and the first ``shots`` taken, training
    ones first: with the same seed, the 4-shot training examples are among the 16-shot ones."""
    counts = np.bincount(data.y, minlength=data.num_classes)
    if counts.min() < shots:
        poorest = int(counts.argmin())
        raise TooFewShots(f"expected at least {shots} training examples of every class of {data.name!r} for "
                          f"{shots} shots, got {counts[poorest]} of class {data.classes[poorest]!r}")
    held = held_out_shots(shots, validation_fraction)
    train, validation = [], []
    for label in range(data.num_classes):
        drawn = rng.permutation(np.flatnonzero(data.y == label))[:shots]
        train.extend(drawn[:shots - held])
        validation.extend(drawn[shots - held:])
    train_set = data.subset(np.sort(np.array(train, dtype=np.int64)))
    return train_set, (data.subset(np.sort(np.array(validation, dtype=np.int64))) if held else train_set)


def _resampled(data: Dataset, length: int) -> Dataset:
    """``data`` with each series resampled to ``length`` points: (N, L) → (N, length), float32 as before."""
    return Dataset(resample(data.x, length), data.y, data.classes, data.name)


def _stratified_split(data: Dataset, fraction: float, rng: np.random.Generator) -> tuple[Dataset, Dataset]:
    """(kept, held_out): about `fraction` of each class held out, at least one when the class has two."""
    held = []
    for label in range(data.num_classes):
        members = rng.permutation(np.flatnonzero(data.y == label))
        if len(members) < 2:
            continue  # a lone example stays on the kept side, so training still sees its class
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held.extend(members[:count])
    mask = np.zeros(len(data), dtype=bool)
    mask[np.array(held, dtype=np.int64)] = True
    return data.subset(np.flatnonzero(~mask)), data.subset(np.flatnonzero(mask))
