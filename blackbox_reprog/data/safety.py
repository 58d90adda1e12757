"""Hostile files: checks made before a file is opened, decoded or allocated, so that a small or
odd file cannot hang the toolkit or exhaust its memory."""
from __future__ import annotations

import math
import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataError

# The most pixels one image may have: 25 megapixels, a full-size photo from most cameras. Targets
# are small (MNIST is 28x28, the zoo's image model takes 128x128) and predict resizes each image
# to the training size, so nothing larger is needed, while one decoded image stays under 75 MB
# (300 MB as float32). Checked from the header, before decoding: a PNG of a few kilobytes can
# claim 14000x14000 pixels.
MAX_IMAGE_PIXELS = 25_000_000
# How many bytes one stored byte of a zip member can become: deflate's ceiling is 1032 to 1
# (np.savez_compressed); np.savez stores members as they are.
_ZIP_EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}


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
