"""``make_splits``: seeded, stratified train / validation / test splits of a dataset, its series
resampled to one length on request."""
from __future__ import annotations

import numpy as np

from ..errors import Refusal
from .dataset import DataError, Dataset, Splits
from .loading import load
from .series import resample


def make_splits(name_or_path: str, *, validation_fraction: float = 0.2,
                test_fraction: float = 0.3, seed: int = 0, length: int = 0) -> Splits:
    """Seeded stratified splits: validation from train only; `test_fraction` only if there is no test.
    ``length`` > 0 resamples every series of every split to that many points (0: as they are)."""
    for label, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise Refusal(f"expected {label} strictly between 0 and 1, got {fraction}")
    if length < 0:
        raise Refusal(f"expected length 0 (series as they are) or a positive number of points, got {length}")
    rng = np.random.default_rng(seed)
    train, test = load(name_or_path)
    if length and train.x.ndim != 2:
        raise DataError(f"expected series to resample to length {length}, got images of shape "
                        f"{train.x.shape[1:]} in {train.name!r}")
    official = test is not None
    if test is None:
        train, test = _stratified_split(train, test_fraction, rng)
    train, validation = _stratified_split(train, validation_fraction, rng)
    if not (len(train) and len(validation) and len(test)):   # a class needs 2 examples to be split
        raise DataError(f"expected train, validation and test splits of at least one example each from "
                        f"{train.name!r}, got {len(train)}, {len(validation)} and {len(test)}; give some "
                        f"class at least {2 if official else 3} examples")
    if length:
        train, validation, test = (_resampled(part, length) for part in (train, validation, test))
    return Splits(train, validation, test)


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
