"""Target labels for new inputs from a finished run: read the inputs, buy one answer per input.

``read_labelled_inputs`` turns what a user has at hand into one batch of target examples,
converted as the training data were: an ``.npz`` (``x_test`` or ``x``, or scikit-learn's
``X_test`` or ``X``) or ``.npy`` array, image files, a folder of them or a folder of class
folders (grey or colour as the program expects, scaled to [0, 1], resized to the training
shape), a ``.csv``, ``.tsv`` or ``.txt`` file of series (one per line, a header row passed
over), or a dataset name or path (its test split).

Inputs may come with their labels, to score the predictions against: a text file whose rows
hold one value more than the program takes, with the run's classes in the first column (a
labelled data file, as training reads it), or a folder of class folders named after the
run's classes. ``predict`` checks the whole batch before the first query and books every
query in a ledger under ``test``: prediction, like the final test pass, is outside the
training budget.

Scores are the label map's (log-scale, not probabilities); a ``Calibration`` (calibration.py)
turns them into probabilities.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import data as data_module
from ..errors import Refusal
from ..backends.ledger import Ledger
from ..run.program import Program
from .calibration import Calibration

IMAGE_SUFFIXES = data_module.IMAGE_SUFFIXES
SERIES_SUFFIXES = data_module.TEXT_SUFFIXES
PURPOSE = "test"        # unbudgeted, like the final test pass; evaluate books its queries there too


@dataclass
class Inputs:
    x: np.ndarray                       # (N, ...) target examples, not yet checked against the program
    names: list[str]                    # one per input: its index, or its file's path
    labels: list[str] | None = None     # the run's class each input is labelled with, when the inputs say


@dataclass
class Predictions:
    names: list[str]            # one per input: its index, or its file's path
    labels: list[str]           # the predicted class, by its original name
    label_index: np.ndarray     # (N,) int64 index into ``classes``
    scores: np.ndarray          # (N, K) float32 label-map scores of every target class
    classes: list[str]
    queries: int                # first attempts booked in the ledger: one per input
    retried: int                # examples sent again after a failed call
    true_labels: list[str] | None = None    # the labels the inputs came with, when they had them
    calibration: Calibration | None = None   # how scores become probabilities; None: they do not

    @property
    def score(self) -> np.ndarray:
        """(N,) the score of each predicted class."""
        return self.scores[np.arange(len(self.labels)), self.label_index]

    @property
    def probabilities(self) -> np.ndarray | None:
        """(N, K) calibrated probabilities of every class; None without a calibration."""
        return None if self.calibration is None else self.calibration.probabilities(self.scores)

    @property
    def probability(self) -> np.ndarray | None:
        """(N,) the calibrated probability of each predicted class; None without a calibration."""
        found = self.probabilities
        return None if found is None else found[np.arange(len(self.labels)), self.label_index]

    @property
    def correct(self) -> int:
        """How many predictions are the inputs' own labels (0 without labels)."""
        return sum(p == t for p, t in zip(self.labels, self.true_labels or []))

    @property
    def accuracy(self) -> float | None:
        """The share of predictions that are the inputs' own labels; None without labels."""
        return None if self.true_labels is None else self.correct / len(self.labels)


def read_inputs(inputs: list[str] | tuple[str, ...], target_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """(N, ...) float32 target examples and a name for each. ``inputs`` is one dataset, array or
    series file, or one or more image files (or one folder of images). Labels are only
    recognised with the run's classes: see read_labelled_inputs."""
    found = read_labelled_inputs(inputs, target_shape)
    return found.x, found.names


def read_labelled_inputs(inputs: list[str] | tuple[str, ...], target_shape: tuple[int, ...],
                         classes: list[str] | tuple[str, ...] = (), resampled: bool = False) -> Inputs:
    """The target examples of ``inputs``, a name for each and, when the inputs carry them, their
    labels among ``classes`` (the run's). ``resampled``: the run resampled its series to the
    target length (data.length), so series of another length are resampled too."""
    inputs = [str(i) for i in inputs]
    paths = [Path(i).expanduser() for i in inputs]
    if paths and all(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return Inputs(_read_images(paths, target_shape), [p.name for p in paths])
    if len(inputs) != 1:
        raise Refusal(f"expected one dataset, array or series file, or one or more image files, got "
                      f"{len(inputs)} inputs ({', '.join(inputs[:3])}{', …' if len(inputs) > 3 else ''})")
    path = paths[0]
    if path.exists() and not path.is_dir():
        data_module.regular_file(path)          # a FIFO or device would block or stream forever
    found = _read_one(path, inputs[0], target_shape, classes, resampled)
    if found.x.ndim == 0 or len(found.x) == 0:
        raise Refusal(f"expected at least one input in {path.name}, got none")
    if resampled and len(target_shape) == 1 and found.x.ndim == 2:
        found.x = data_module.resample(found.x, target_shape[0])         # (N, L) → (N, target length)
    found.names = found.names or [str(i) for i in range(len(found.x))]
    return found


def _read_one(path: Path, name: str, target_shape: tuple[int, ...], classes, resampled: bool) -> Inputs:
    """One input other than image files: a folder of images, an array, a series file, or a dataset."""
    suffix = path.suffix.lower()
    if path.is_dir():
        found = _read_image_folder(path, target_shape, classes)
        if found is not None:
            return found
    elif path.is_file() and suffix == ".npz":
        return Inputs(_read_npz(path), [])
    elif path.is_file() and suffix == ".npy":
        return Inputs(_read_npy(path), [])
    elif path.is_file() and suffix in SERIES_SUFFIXES:
        return _read_series(path, target_shape, classes, resampled)
    elif path.is_file() and suffix != ".ts":    # .ts is the one dataset file the branches above leave
        raise Refusal(f"expected a dataset (.ts, .npz, .txt), an array (.npy, .npz), a series (.csv, .txt) "
                      f"or image ({', '.join(IMAGE_SUFFIXES)}) file, or a folder of images, got {path.name!r}")
    train, test = data_module.load(name)        # a dataset name or path: its test split, or its only split
    return Inputs((test if test is not None else train).x, [])


def predict(program: Program, x: np.ndarray, names: list[str] | None = None,
            labels: list[str] | None = None, calibration: Calibration | None = None) -> Predictions:
    """Predict every example of ``x`` (N, *target_shape): the whole batch is checked first, so a
    bad input is refused before any query; then one query per example, booked under ``test``.
    ``labels``, the inputs' own classes when known, are kept to score the predictions;
    ``calibration`` turns the scores into probabilities."""
    program.check_targets(x)
    ledger = Ledger(program.backend, None)
    scores = program.target_logits(x.astype(np.float32), ledger, PURPOSE)     # (N, K)
    label_index = scores.argmax(dim=1).numpy()                                # (N,)
    tally = ledger.summary()[PURPOSE]
    return Predictions(names=names or [str(i) for i in range(len(x))],
                       labels=[program.classes[i] for i in label_index.tolist()], label_index=label_index,
                       scores=scores.numpy(), classes=list(program.classes),
                       queries=tally["queries"], retried=tally["retried"], true_labels=labels,
                       calibration=calibration)


# --------------------------------------------------------------------------- readers

def _read_npz(path: Path) -> np.ndarray:
    """``x_test`` (a train/test archive) or ``x``, under numpy's or scikit-learn's names; 8-bit
    images are scaled to [0, 1] as the data loader does."""
    try:
        data_module.check_npz_sizes(path)       # before numpy allocates what a header claims
        with np.load(path, allow_pickle=False) as archive:
            key = next(filter(None, (data_module.npz_member(archive.files, k) for k in ("x_test", "x"))), None)
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
    """``x`` in the shape the data loader gives: (N, 1, L) series and (N, H, W) grey images
    are made (N, L) and (N, 1, H, W); 8-bit images are scaled to [0, 1]."""
    if x.dtype.kind not in "biuf":
        raise Refusal(f"expected real numbers in {path.name}, got dtype {x.dtype}")
    x = data_module.usual_shape(x)
    if x.ndim == 4 and x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)      # 8-bit pixels, as the data loader reads them
    return x


def _read_series(path: Path, target_shape: tuple[int, ...], classes, resampled: bool) -> Inputs:
    """One series per row of a .csv, .tsv or .txt file, with its label first when the file is
    labelled (see _first_column_labels); a header row is passed over."""
    table = data_module.read_table(path)
    if not table.rows:
        return Inputs(np.empty((0, 0), np.float32), [])
    width = len(table.rows[0])
    for row, line in zip(table.rows, table.lines):
        if len(row) != width:
            raise Refusal(f"expected every series in {path.name} to have {width} values like line "
                          f"{table.lines[0]}, got {len(row)} on line {line}")
    labels = _first_column_labels(table, width, target_shape, classes, resampled)
    x = table.numbers(first_column=0 if labels is None else 1).astype(np.float32)     # (N, L)
    return Inputs(x, [], labels)


def _first_column_labels(table, width: int, target_shape: tuple[int, ...], classes,
                         resampled: bool) -> list[str] | None:
    """The first column as the rows' labels, when it holds them: the rows have one value more
    than the program takes (any number, for a run that resampled its series) and the column
    names the run's classes. None when the rows are series alone."""
    if len(target_shape) != 1 or not classes or width < 2:
        return None
    one_more = width == target_shape[0] + 1
    if not (one_more or resampled):
        return None
    named = _as_classes(table.first_column(), classes)
    if all(label is not None for label in named):
        return named
    if one_more and any(label is not None for label in named):    # some rows are labelled: one label is wrong
        row = next(i for i, label in enumerate(named) if label is None)
        raise Refusal(f"expected one of the run's classes ({_listed(classes)}) as the label in row "
                      f"{table.lines[row]}, column 1 of {table.name}, got {table.rows[row][0]!r}")
    return None


def _as_classes(labels: list[str], classes) -> list[str | None]:
    """Each label as the run's class it names ('1.0' names class '1', as training reads it), or None."""
    try:
        labels, _ = data_module.canonical_labels(labels, "the inputs")
    except Refusal:                     # NaN among numbers: values, not labels
        return [None] * len(labels)
    return [label if label in classes else None for label in labels]


def _listed(classes, most: int = 10) -> str:
    shown = ", ".join(classes[:most])
    return shown + (", …" if len(classes) > most else "")


def _read_image_folder(folder: Path, target_shape: tuple[int, ...], classes) -> Inputs | None:
    """The images of a folder, or of its class folders (named by their path in the folder, and
    labelled when every class folder is named after one of the run's classes); None when it
    holds neither, so that it is read as a dataset (the MNIST file layout)."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if images:                                  # a plain folder of images
        return Inputs(_read_images(images, target_shape), [p.name for p in images])
    images = data_module.class_folder_images(folder)
    if not images:
        return None
    labels = _as_classes([p.parent.name for p in images], classes)
    return Inputs(_read_images(images, target_shape), [p.relative_to(folder).as_posix() for p in images],
                  labels if classes and all(label is not None for label in labels) else None)


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
