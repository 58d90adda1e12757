"""Crash-safe file writing, shared by the run folder and the model cache."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: setting the umask to read it is a process-wide race between threads
UMASK = _read_umask()


def atomic_write(path: Path, payload: bytes, *, replace: bool = True) -> bool:
    """Temp file in the same folder, fsync, replace, fsync the folder: a reader sees the old
    file or the new one, never half of one, even across a crash. ``replace=False`` keeps a
    file already there (and returns False) instead of replacing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)             # mkstemp makes 0600; match an ordinary file
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)                # fails if the name exists: never overwrites
            except FileExistsError:
                return False
            finally:
                Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return True
