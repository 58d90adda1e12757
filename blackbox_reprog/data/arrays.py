"""numpy archives (.npz): inputs and labels under numpy's names (x_train, y_train, x_test,
y_test; or x, y) or scikit-learn's (X_train, …; or X, y), and the shapes people save them in."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataError, Raw, RawPair
from .safety import check_npz_sizes

# An archive holds a train and a test half, or one set that is split later: the first layout found wins.
NPZ_LAYOUTS = (("x_train", "y_train", "x_test", "y_test"), ("x", "y"))
# A 3-D array (N, H, W) is grey images when both H and W are at least this: the smallest images
# the toolkit ships (scikit-learn's digits) are 8x8. Series are (N, L), or (N, 1, L) as aeon and
# sktime keep one-channel series.
MIN_IMAGE_SIDE = 8


def npz_member(names: list[str], key: str) -> str | None:
    """The member of an archive holding ``key``: 'x_train' under numpy's name or scikit-learn's 'X_train'."""
    return next((name for name in (key, key.capitalize()) if name in names), None)


def read_npz(path: Path) -> RawPair:
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            keys = next(([npz_member(archive.files, key) for key in layout] for layout in NPZ_LAYOUTS
                         if all(npz_member(archive.files, key) for key in layout)), None)
            if keys is None:
                raise DataError(f"expected keys x, y or x_train, y_train, x_test, y_test (or scikit-learn's X, "
                                f"X_train, X_test) in {path.name}, got {sorted(archive.files)}")
            arrays = [archive[key] for key in keys]         # only these: other members are never read
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"expected a readable .npz archive at {path.name}, got one that fails to load "
                        f"({exc})") from None
    if len(arrays) == 4:
        return _npz_part(arrays[0], arrays[1], path), _npz_part(arrays[2], arrays[3], path)
    return _npz_part(arrays[0], arrays[1], path), None


def usual_shape(x: np.ndarray) -> np.ndarray:
    """``x`` in the shapes the toolkit works with, (N, L) series or (N, C, H, W) images, when it
    comes in a shape people often save: (N, 1, L) one-channel series lose the channel axis, and
    (N, H, W) grey images (H and W at least MIN_IMAGE_SIDE) gain one. Other shapes are left as
    they are, for the caller to refuse."""
    if x.ndim == 3 and x.shape[1] == 1:
        return x[:, 0]                                          # (N, 1, L) → (N, L)
    if x.ndim == 3 and min(x.shape[1:]) >= MIN_IMAGE_SIDE:
        return x[:, None]                                       # (N, H, W) → (N, 1, H, W)
    return x


def _npz_part(x: np.ndarray, y: np.ndarray, path: Path) -> Raw:
    # real numbers only: a complex x would lose its imaginary part in the float32 cast
    real = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool
    x = usual_shape(x)
    if x.ndim not in (2, 4) or not real:
        shapes = (f" (a 3-D x is read as (N, 1, L) series, or as (N, H, W) grey images when H and W are at least "
                  f"{MIN_IMAGE_SIDE})" if x.ndim == 3 else "")
        raise DataError(f"expected numeric x of shape (N, L) or (N, C, H, W) in {path.name}, got {x.dtype} of "
                        f"shape {x.shape}{shapes}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"expected y of shape ({len(x)},) to match x in {path.name}, got shape {y.shape}")
    if x.ndim == 4 and x.dtype == np.uint8:
        x = x / 255.0  # 8-bit pixels; float images must already be in [0, 1]
    elif x.ndim == 4 and x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1):
        raise DataError(f"expected image values in [0, 1] (or uint8) in {path.name}, got "
                        f"values from {np.nanmin(x):g} to {np.nanmax(x):g}")
    return x, [str(v) for v in y.tolist()]
