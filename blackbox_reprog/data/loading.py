"""``load``: a built-in name or a path (file or folder) to (train, test) datasets."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from .builtin import builtin_registry
from .dataset import DataError, Dataset, RawPair
from .encoding import build_datasets
from .formats import read_file
from .images import idx_file, read_idx_folder, read_image_folder


def load(name_or_path: str) -> tuple[Dataset, Dataset | None]:
    """(train, test) for a built-in name or a path; test is None when the source has no split."""
    try:
        name, (train, test) = _read(str(name_or_path))
    except OSError as exc:  # permissions, a folder where a file should be, ...
        raise DataError(f"expected a readable dataset at {str(name_or_path)!r}, got one that fails to read "
                        f"({exc})") from None
    return build_datasets(name, train, test)


def _read(name_or_path: str) -> tuple[str, RawPair]:
    path = Path(name_or_path).expanduser()
    if path.is_dir() and idx_file(path, "train-images-idx3-ubyte"):
        return path.name, read_idx_folder(path)
    if path.is_dir():
        return path.name, (read_image_folder(path), None)
    if path.exists():
        return read_file(path)
    registry, key = builtin_registry(), name_or_path.lower()
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
