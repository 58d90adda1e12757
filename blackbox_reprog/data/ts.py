"""sktime/aeon .ts files: comments, @header lines, then one 'v1,v2,...,vn:label' row per example."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .dataset import DataError, Raw
from .safety import regular_file


def read_ts(path: Path) -> Raw:
    """(N, L) values and N labels; only univariate, equal-length classification sets are read."""
    lines = regular_file(path).read_text(encoding="utf-8", errors="replace").splitlines()
    header, consumed = _ts_header(lines)
    if "data" not in header:
        raise DataError(f"expected an @data line in {path.name}, got none")
    reason = ts_refusal(header)
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


def ts_header_of(path: Path) -> dict[str, str]:
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


def ts_refusal(header: dict[str, str]) -> str | None:
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
