"""Series of another length than the model takes: ``resample`` stretches or shrinks them."""
from __future__ import annotations

import numpy as np

from .dataset import DataError


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """(N, ..., L) → (N, ..., length): each series read at ``length`` evenly spaced points from its
    first value to its last, by linear interpolation between the two neighbouring values. The
    first and last values are kept; a series of one value becomes that value ``length`` times.
    Floats keep their type; other numbers come back as float64."""
    if length < 1:
        raise DataError(f"expected a length of at least 1 to resample series to, got {length}")
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    old = x.shape[-1]
    if old == length:
        return x.astype(dtype, copy=False)
    if old == 0:
        raise DataError(f"expected series of at least one value to resample, got shape {x.shape}")
    if old == 1:
        return np.repeat(x, length, axis=-1).astype(dtype, copy=False)
    positions = np.linspace(0.0, old - 1, length)                   # (length,) where each new point falls
    left = np.minimum(positions.astype(np.int64), old - 2)          # (length,) the neighbour before it
    weight = positions - left                                       # (length,) 0 at left, 1 at left + 1
    # (N, ..., length): computed in float64, so that float32 series are rounded once, at the end
    resampled = x[..., left] * (1.0 - weight) + x[..., left + 1] * weight
    return resampled.astype(dtype, copy=False)
