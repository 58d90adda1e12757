"""``load``: a built-in name or a path (file or folder) to (train, test) datasets."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from .builtin import SOURCES, absent_builtins, builtin_registry
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
        return registry[key].name, registry[key].reader()
    if path.suffix or os.sep in name_or_path:
        raise DataError(f"expected a dataset file or folder at {str(path)!r}, got nothing there")
    absent = {name.lower(): source for name, source in absent_builtins().items()}
    if key in absent:
        raise DataError(f"expected the built-in dataset {name_or_path!r} installed, got it absent here "
                        f"(install it: {SOURCES[absent[key]].install})")
    closest = closest_builtin(key, [entry.name for entry in registry.values()])
    hint = f" (did you mean {closest!r}?)" if closest else ""
    raise DataError(f"expected a built-in dataset name or an existing path, got {name_or_path!r}, which is "
                    f"neither{hint}; `bbreprog datasets` lists the {len(registry)} built-in datasets")


def closest_builtin(query: str, names: list[str]) -> str | None:
    """The name most like ``query``: among those containing it ('italy'), else a look-alike ('gunpont')."""
    lower = {name.lower(): name for name in names}
    query = query.lower()
    containing = sorted((k for k in lower if query in k), key=lambda k: -difflib.SequenceMatcher(None, query, k).ratio())
    close = containing[:1] or difflib.get_close_matches(query, list(lower), n=1, cutoff=0.6)
    return lower[close[0]] if close else None
