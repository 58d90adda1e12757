"""What every reader produces and every caller receives: ``Dataset``, ``Splits``, and the one
error of the data package, ``DataError``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import Refusal

# What a reader produces before labels are encoded: inputs and the original labels as strings.
Raw = tuple[np.ndarray, list[str]]
RawPair = tuple[Raw, Optional[Raw]]


class DataError(Refusal):
    """A dataset cannot be read or is unusable; message is one sentence."""


@dataclass(frozen=True, eq=False)  # eq=False: array fields have no single truth value to compare
class Dataset:
    x: np.ndarray  # (N, L) float32 for series; (N, C, H, W) float32 in [0, 1] for images
    y: np.ndarray  # (N,) int64 in 0..num_classes-1
    classes: tuple[str, ...]  # original label of each class index
    name: str

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"expected one label per input in {self.name!r}, got "
                            f"{len(self.x)} inputs and {len(self.y)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> Dataset:
        """The examples at `index` (positions or a boolean mask), keeping classes and name."""
        index = np.asarray(index)
        return Dataset(self.x[index], self.y[index], self.classes, self.name)


@dataclass(frozen=True)
class Splits:
    train: Dataset
    validation: Dataset
    test: Dataset
