"""Hostile or odd files given as data, inputs or a model: each is refused in one sentence, before
anything is allocated, decoded, opened or spent.

- an .npz or .npy whose array header claims far more data than the file holds (numpy would
  allocate it all from the header: an uncaught MemoryError);
- an image whose header claims more pixels than ``data.MAX_IMAGE_PIXELS`` (Pillow's
  DecompressionBombError, or a decode of hundreds of megabytes);
- NaN or infinite numeric labels (they became a class 'nan' and broke the class order);
- a named pipe (FIFO) or device where a file is expected (opening a FIFO waits forever);
- a folder given as an ONNX model (it was reported as missing).

Through the command line each refusal is exit code 2, one line on stderr, no run folder. Cases
that could hang run ``bbreprog`` in a subprocess with a timeout, so a regression fails instead
of hanging; the rest run in-process, where ``tests.models.CALLS`` shows that no query was made.
Every hostile file is a real file written here, small on disk and in memory.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blackbox_reprog.tools.cli import main
from blackbox_reprog.data import DataError, load
from tests.models import CALLS, reset_calls

REPO = Path(__file__).resolve().parents[1]
BBREPROG = Path(sys.executable).with_name("bbreprog")
SERIES = {"backend.name": "callable", "backend.model": "tests.models:signal_model",
          "backend.options": "{input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}"}
IMAGES = {**SERIES, "backend.options": "{input_shape = [3, 8, 8], num_classes = 32, value_range = [0.0, 1.0]}",
          "transform.kind": "frame"}
HANG = 60       # seconds: a refusal takes a few; a FIFO opened for reading never returns
TERABYTES = (10**6, 10**6)          # the shape a hostile header claims: 8 TB of float64


def sets(values: dict) -> list[str]:
    return [a for key, value in values.items() for a in ("--set", f"{key}={value}")]


def demo(out: Path, values: dict) -> list[str]:
    return ["demo", "--quiet", "--budget", "20000", "--out", str(out), *sets(values)]


def refused_in_process(args: list[str], message: str, out: Path | None = None) -> None:
    """Run ``bbreprog`` in-process: exit 2, the one line ``error: <message>``, no query, no run folder."""
    reset_calls()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert CALLS["examples"] == 0, f"{CALLS['examples']} examples reached the model before the refusal"
    assert out is None or not out.exists() or not any(out.iterdir()), "a run folder was created"


def refused_in_subprocess(args: list[str], message: str, out: Path | None = None) -> None:
    """Run ``bbreprog`` as its own process, killed after HANG seconds: exit 2, one line, no run folder."""
    try:
        result = subprocess.run([str(BBREPROG), *args], cwd=REPO, capture_output=True, text=True, timeout=HANG,
                                check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bbreprog {' '.join(args[:2])} still running after {HANG} s: it blocked on the file")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr == f"error: {message}\n", result.stderr
    assert out is None or not out.exists() or not any(out.iterdir()), "a run folder was created"


# ---------------------------------------------------------------- crafted files

def npy(shape: tuple, data: np.ndarray) -> bytes:
    """An .npy stream whose header claims ``shape`` but whose data are only those of ``data``."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": data.dtype.str, "fortran_order": False, "shape": shape})
    return stream.getvalue() + data.tobytes()


def npz(path: Path, members: dict[str, bytes], *, compression=zipfile.ZIP_STORED,
        declared: dict[str, int] | None = None) -> Path:
    """A zip of raw members, written by hand; ``declared`` forges a member's uncompressed size in
    the central directory (the size zipfile trusts), as a hostile writer would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
        for name, size in (declared or {}).items():
            archive.getinfo(name).file_size = size          # written into the central directory on close
    return path


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid black 1-bit PNG, compressed row by row: a 14000x14000 one is ~25 KB on disk and
    never more than one row in memory here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row, compressor = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)     # filter byte, then bits
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def image_folder(root: Path, big: tuple[int, int]) -> Path:
    """root/a/big.png of size ``big`` and root/b/small.png (4x4)."""
    blank_png(root / "a" / "big.png", *big)
    blank_png(root / "b" / "small.png", 4, 4)
    return root


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


SMALL_Y = npy((4,), np.arange(4) % 2)


# ---------------------------------------------------------------- 1. array headers that promise too much

HUGE_NPZ = {
    "header claims 8 TB": {},
    # the zip's own record of the member's size forged to match: capped by the bytes really on disk
    "header and stored member size both forged": {"declared": {"x.npy": 8 * 10**12 + 128}},
    "header and deflated member size both forged": {"declared": {"x.npy": 8 * 10**12 + 128},
                                                    "compression": zipfile.ZIP_DEFLATED},
}


@pytest.mark.parametrize("case", HUGE_NPZ)
def test_an_npz_whose_header_claims_terabytes_is_refused_by_train(tmp_path, case):
    path = npz(tmp_path / "huge.npz", {"x.npy": npy(TERABYTES, np.zeros((4, 3))), "y.npy": SMALL_Y}, **HUGE_NPZ[case])
    out = tmp_path / "runs"
    # then "got 96 bytes" (stored), or up to 1032 times the deflated bytes
    message = ("expected array 'x' in huge.npz to hold the 8,000,000,000,000 bytes its header promises "
               "(float64 of shape (1000000, 1000000)), got ")
    with pytest.raises(DataError) as error:
        load(str(path))
    assert str(error.value).startswith(message)
    assert str(error.value).endswith(" 96 bytes") or "deflated" in case
    refused_in_process(demo(out, {**SERIES, "data.name": path}), message, out)


def test_an_npz_member_that_is_not_an_array_is_refused(tmp_path):
    """A member that is not an .npy array was handed over as bytes (AttributeError, a traceback)."""
    path = npz(tmp_path / "odd.npz", {"x": b"hello", "y.npy": SMALL_Y})
    with pytest.raises(DataError, match=r"expected a readable .npz archive at odd.npz, got one that fails to load"):
        load(str(path))


def test_an_honest_compressed_npz_of_zeros_still_loads(tmp_path):
    """deflate packs zeros about 1000 to 1: under the 1032 to 1 ceiling the size check allows."""
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((1000, 1000)), y=np.arange(1000) % 2)
    train, _ = load(str(tmp_path / "zeros.npz"))
    assert train.x.shape == (1000, 1000)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished ItalyPowerDemand run (series of 24 samples) on the callable test model."""
    out = tmp_path_factory.mktemp("finished")
    result = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(out), "--budget", "2000", *sets(
        {**SERIES, "train.batch_size": 8, "estimator.directions": 2, "label_map.per_class": 2, "name": "done"})])
    assert result.exit_code == 0, result.output
    return out / "done"


def test_predict_refuses_an_npy_whose_header_claims_terabytes(finished, tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy(TERABYTES, np.zeros(24)))
    refused_in_process(["predict", str(finished), str(path)],
                       "expected the array in huge.npy to hold the 8,000,000,000,000 bytes its header promises "
                       "(float64 of shape (1000000, 1000000)), got 192 bytes")


def test_predict_refuses_an_npz_whose_header_claims_terabytes(finished, tmp_path):
    path = npz(tmp_path / "huge.npz", {"x.npy": npy(TERABYTES, np.zeros(24))})
    refused_in_process(["predict", str(finished), str(path)],
                       "expected array 'x' in huge.npz to hold the 8,000,000,000,000 bytes its header promises "
                       "(float64 of shape (1000000, 1000000)), got 192 bytes")


# ---------------------------------------------------------------- 2. images with too many pixels

def test_a_14000_pixel_square_png_in_an_image_folder_is_refused(tmp_path):
    """196 megapixels: over Pillow's own limit, which raised DecompressionBombError (a traceback)."""
    root, out = image_folder(tmp_path / "bomb", (14000, 14000)), tmp_path / "runs"
    assert (root / "a" / "big.png").stat().st_size < 100_000
    message = (f"expected an image of at most 25,000,000 pixels, got {root / 'a' / 'big.png'}, which has more than "
               f"178,956,970 pixels")
    with pytest.raises(DataError) as error:
        load(str(root))
    assert str(error.value) == message
    refused_in_process(demo(out, {**IMAGES, "data.name": root}), message, out)


def test_an_image_under_pillows_limit_but_over_ours_is_refused_before_decoding(tmp_path):
    """10000x10000: Pillow only warns (a second line on stderr) and decodes 100 megapixels."""
    root = image_folder(tmp_path / "big", (10000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # Pillow's DecompressionBombWarning would fail here
        with pytest.raises(DataError) as error:
            load(str(root))
    assert str(error.value) == (f"expected an image of at most 25,000,000 pixels, got {root / 'a' / 'big.png'}, "
                                f"which is 10000x10000 (100,000,000 pixels)")


@pytest.mark.parametrize("width, refused", [(5000, False), (5001, True)])
def test_predict_reads_images_up_to_the_pixel_limit(tmp_path, width, refused):
    from blackbox_reprog.tools.predict import read_inputs
    path = blank_png(tmp_path / "photo.png", width, 5000)
    if not refused:
        x, _ = read_inputs([path], (1, 8, 8))
        assert x.shape == (1, 1, 8, 8)
        return
    with pytest.raises(DataError) as error:         # a Refusal, from the data module's image check
        read_inputs([path], (1, 8, 8))
    assert str(error.value) == (f"expected an image of at most 25,000,000 pixels, got {path}, which is 5001x5000 "
                                f"(25,005,000 pixels)")


# ---------------------------------------------------------------- 3. NaN and infinite labels

@pytest.mark.parametrize("name, write, message", [
    ("nan.npz", lambda p: np.savez(p, x=np.zeros((6, 4)), y=[0, 1, np.nan, 1, 0, 1]),
     "expected a finite number as every label in the training set of 'nan', got 'nan' in row 3"),
    ("inf.npz", lambda p: np.savez(p, x=np.zeros((6, 4)), y=[np.inf, 1, 0, 1, 0, 1]),
     "expected a finite number as every label in the training set of 'inf', got 'inf' in row 1"),
    ("Gap_TRAIN.txt", lambda p: p.write_text("1 0.1 0.2\nNaN 0.3 0.4\n2 0.5 0.6\n"),
     "expected a finite number as the label in row 2, column 1 of Gap_TRAIN.txt, got 'NaN'"),
    ("labels.ts", lambda p: p.write_text("@classLabel true 1 2\n@data\n1,2:1\n3,4:2\n5,6:NaN\n"),
     "expected a finite number as every label in the training set of 'labels', got 'NaN' in row 3"),
    ("split.npz", lambda p: np.savez(p, x_train=np.zeros((4, 2)), y_train=[0, 1, 0, 1],
                                     x_test=np.zeros((2, 2)), y_test=[1.0, np.nan]),
     "expected a finite number as every label in the test set of 'split', got 'nan' in row 2"),
])
def test_nan_and_infinite_labels_are_refused_with_their_row(tmp_path, name, write, message):
    write(tmp_path / name)
    with pytest.raises(DataError) as error:
        load(str(tmp_path / name))
    assert str(error.value) == message


def test_nan_labels_are_refused_by_train(tmp_path):
    path, out = tmp_path / "nan.npz", tmp_path / "runs"
    x = np.random.default_rng(0).normal(size=(30, 16))
    np.savez(path, x=x, y=np.array([0.0, 1.0, np.nan] * 10))
    refused_in_process(demo(out, {**SERIES, "data.name": path}),
                       "expected a finite number as every label in the training set of 'nan', got 'nan' in row 3", out)


def test_float_labels_name_classes_by_value(tmp_path):
    """Documented (getting-started.md): 1.0 and 1 are one class '1'; 0.5 is a class of its own, '0.5'."""
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 2)), y=np.array([0.5, 1.0, 1, 0.5]))
    train, _ = load(str(tmp_path / "f.npz"))
    assert train.classes == ("0.5", "1") and list(train.y) == [0, 1, 1, 0]


# ---------------------------------------------------------------- 4. named pipes and devices

TRAIN_FIFOS = {
    "an .npz": (lambda d: fifo(d / "x.npz"), lambda d: d / "x.npz"),
    "a .ts": (lambda d: fifo(d / "x.ts"), lambda d: d / "x.ts"),
    "a UCR .txt": (lambda d: fifo(d / "X_TRAIN.txt"), lambda d: d / "X_TRAIN.txt"),
    "the test half beside a .ts": (
        lambda d: (d.mkdir(parents=True), (d / "T_TRAIN.ts").write_text("@classLabel true a b\n@data\n1,2:a\n3,4:b\n"),
                   fifo(d / "T_TEST.ts")),
        lambda d: d / "T_TEST.ts"),
    "an image in a class folder": (lambda d: (blank_png(d / "b" / "ok.png", 4, 4), fifo(d / "a" / "1.png")),
                                   lambda d: d / "a" / "1.png"),
}
DATA_NAME = {"an .npz": "x.npz", "a .ts": "x.ts", "a UCR .txt": "X_TRAIN.txt",
             "the test half beside a .ts": "T_TRAIN.ts", "an image in a class folder": ""}


@pytest.mark.parametrize("case", TRAIN_FIFOS)
def test_train_refuses_a_named_pipe_instead_of_blocking(tmp_path, case):
    make, pipe = TRAIN_FIFOS[case]
    folder, out = tmp_path / "data", tmp_path / "runs"
    make(folder)
    values = IMAGES if case.startswith("an image") else SERIES
    refused_in_subprocess(demo(out, {**values, "data.name": folder / DATA_NAME[case]}),
                          f"expected a regular file at {pipe(folder)}, got a named pipe (FIFO)", out)


@pytest.mark.parametrize("name", ["x.npz", "x.npy", "x.csv"])
def test_predict_refuses_a_named_pipe_instead_of_blocking(finished, tmp_path, name):
    path = fifo(tmp_path / name)
    refused_in_subprocess(["predict", str(finished), str(path)],
                          f"expected a regular file at {path}, got a named pipe (FIFO)")


def test_predict_refuses_a_named_pipe_among_images(tmp_path):
    """No hang before either (a non-file was reported as 'nothing there'); now it is named."""
    from blackbox_reprog.tools.predict import read_inputs
    path = fifo(tmp_path / "a.png")
    with pytest.raises(DataError) as error:         # a Refusal, from the data module's file check
        read_inputs([path], (1, 8, 8))
    assert str(error.value) == f"expected a regular file at {path}, got a named pipe (FIFO)"


def test_a_device_named_like_a_dataset_is_refused(tmp_path):
    (tmp_path / "x.npz").symlink_to("/dev/null")
    with pytest.raises(DataError) as error:
        load(str(tmp_path / "x.npz"))
    assert str(error.value) == f"expected a regular file at {tmp_path / 'x.npz'}, got a device"


# ---------------------------------------------------------------- 5. a folder as an ONNX model

def test_a_folder_given_as_an_onnx_model_is_named_a_folder(tmp_path):
    folder, out = tmp_path / "model", tmp_path / "runs"
    folder.mkdir()
    refused_in_process(demo(out, {"backend.name": "onnx", "backend.model": folder}),
                       f"expected an ONNX model file (.onnx), got {folder}, which is a folder", out)
