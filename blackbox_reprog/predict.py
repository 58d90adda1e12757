"""Target labels for new inputs from a finished run: read the inputs, buy one answer per input.

``read_inputs`` turns what a user has at hand into one batch of target examples, converted as
the training data were: an ``.npz`` (``x_test`` or ``x``) or ``.npy`` array, image files or a
folder of them (grey or colour as the program expects, scaled to [0, 1], resized to the
training shape), a ``.csv`` / ``.txt`` file of series (one per line), or a dataset name or path
(its test split). ``predict`` checks the whole batch before the first query and books every
query in a ledger under ``test``: prediction, like the final test pass, is outside the
training budget.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as data_module
from .errors import Refusal
from .ledger import Ledger
from .program import Program

IMAGE_SUFFIXES = data_module.IMAGE_SUFFIXES
SERIES_SUFFIXES = (".csv", ".txt")
PURPOSE = "test"        # unbudgeted, like the final test pass; evaluate books its queries there too


@dataclass
class Predictions:
    names: list[str]            # one per input: its index, or its file name
    labels: list[str]           # the predicted class, by its original name
    label_index: np.ndarray     # (N,) int64 index into ``classes``
    scores: np.ndarray          # (N, K) float32 label-map scores of every target class
    classes: list[str]
    queries: int                # first attempts booked in the ledger: one per input
    retried: int                # examples sent again after a failed call

    @property
    def score(self) -> np.ndarray:
        """(N,) the score of each predicted class."""
        return self.scores[np.arange(len(self.labels)), self.label_index]


def read_inputs(inputs: list[str] | tuple[str, ...], target_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """(N, ...) float32 target examples and a name for each. ``inputs`` is one dataset, array or
    series file, or one or more image files (or one folder of images)."""
    inputs = [str(i) for i in inputs]
    paths = [Path(i).expanduser() for i in inputs]
    if paths and all(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return _read_images(paths, target_shape), [p.name for p in paths]
    if len(inputs) != 1:
        raise Refusal(f"expected one dataset, array or series file, or one or more image files, got "
                      f"{len(inputs)} inputs ({', '.join(inputs[:3])}{', …' if len(inputs) > 3 else ''})")
    path = paths[0]
    if path.exists() and not path.is_dir():
        data_module.regular_file(path)          # a FIFO or device would block or stream forever
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
    if images:                                  # a plain folder of images; class subfolders make a dataset
        return _read_images(images, target_shape), [p.name for p in images]
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".npz":
        x = _read_npz(path)
    elif path.is_file() and suffix == ".npy":
        x = _read_npy(path)
    elif path.is_file() and suffix in SERIES_SUFFIXES:
        x = _read_series(path)
    elif path.is_file() and suffix != ".ts":    # .ts is the one dataset file the branches above leave
        raise Refusal(f"expected a dataset (.ts, .npz, .txt), an array (.npy, .npz), a series (.csv, .txt) "
                      f"or image ({', '.join(IMAGE_SUFFIXES)}) file, or a folder of images, got {path.name!r}")
    else:                                       # a dataset name or path: its test split, or its only split
        train, test = data_module.load(inputs[0])
        x = (test if test is not None else train).x
    if x.ndim == 0 or len(x) == 0:
        raise Refusal(f"expected at least one input in {path.name}, got none")
    return x, [str(i) for i in range(len(x))]


def predict(program: Program, x: np.ndarray, names: list[str] | None = None) -> Predictions:
    """Predict every example of ``x`` (N, *target_shape): the whole batch is checked first, so a
    bad input is refused before any query; then one query per example, booked under ``test``."""
    program.check_targets(x)
    ledger = Ledger(program.backend, None)
    scores = program.target_logits(x.astype(np.float32), ledger, PURPOSE)     # (N, K)
    label_index = scores.argmax(dim=1).numpy()                                # (N,)
    tally = ledger.summary()[PURPOSE]
    return Predictions(names=names or [str(i) for i in range(len(x))],
                       labels=[program.classes[i] for i in label_index.tolist()], label_index=label_index,
                       scores=scores.numpy(), classes=list(program.classes),
                       queries=tally["queries"], retried=tally["retried"])


# --------------------------------------------------------------------------- readers

def _read_npz(path: Path) -> np.ndarray:
    """``x_test`` (a train/test archive) or ``x``; 8-bit images are scaled to [0, 1] as the
    data loader does."""
    try:
        data_module.check_npz_sizes(path)       # before numpy allocates what a header claims
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("x_test", "x") if k in archive.files), None)
            if key is None:
                raise Refusal(f"expected an array x or x_test in {path.name}, got {sorted(archive.files)}")
            x = archive[key]
    except Refusal:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise Refusal(f"expected a readable .npz archive at {path.name}, got one that fails to load "
                      f"({type(error).__name__})") from None
    return _as_examples(x, path)


def _read_npy(path: Path) -> np.ndarray:
    try:
        data_module.check_npy_size(path)        # before numpy allocates what the header claims
        x = np.load(path, allow_pickle=False)
    except Refusal:
        raise
    except (OSError, EOFError, ValueError) as error:
        raise Refusal(f"expected a readable .npy array at {path.name}, got one that fails to load "
                      f"({type(error).__name__})") from None
    return _as_examples(x, path)


def _as_examples(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise Refusal(f"expected real numbers in {path.name}, got dtype {x.dtype}")
    if x.ndim == 4 and x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)      # 8-bit pixels, as the data loader reads them
    return x


def _read_series(path: Path) -> np.ndarray:
    """One series per line, values separated by commas or white space; blank lines skipped."""
    rows, first = [], None                      # first: (values, line) of the first series
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in re.split(r"[,\s]+", line.strip().strip(","))]
        except ValueError:
            raise Refusal(f"expected numbers separated by commas or spaces on line {number} of {path.name}, "
                          f"got {line.strip()[:40]!r}") from None
        first = first or (len(row), number)
        if len(row) != first[0]:
            raise Refusal(f"expected every series in {path.name} to have {first[0]} values like line "
                          f"{first[1]}, got {len(row)} on line {number}")
        rows.append(row)
    return np.array(rows, dtype=np.float32)


def _read_images(paths: list[Path], target_shape: tuple[int, ...]) -> np.ndarray:
    """(N, C, H, W) in [0, 1]: grey or colour as the program's targets, resized to their size."""
    if len(target_shape) != 3:
        raise Refusal(f"expected target examples of shape {target_shape} (series), got image files "
                      f"({paths[0].name})")
    from PIL import Image               # imported here: only image inputs need Pillow
    channels, height, width = target_shape
    images = []
    for path in paths:
        try:
            with data_module.open_image(path) as image:     # a regular file, pixels counted before decoding
                image = image.convert("L" if channels == 1 else "RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32) / np.float32(255)  # (H, W) or (H, W, 3)
        except OSError as error:
            raise Refusal(f"expected a readable image at {path}, got one that fails to open "
                          f"({type(error).__name__})") from None
        images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))  # (C, H, W)
    return np.stack(images)
