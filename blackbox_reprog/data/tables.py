"""Delimited text: .csv, .tsv and UCR .txt files, one example per row, its label first.

Fields are separated by tabs in a .tsv; in the other files by commas when the first row holds
one, else by white space (the UCR archive's .txt). Blank lines are passed over, and a delimiter
that closes a row is ignored. The first row is a header, and passed over, when it is not data:
when the fields after its first are all words ('label,t1,t2,…'), or when they are all numbers
but its first field is a word above a row whose label is a number ('label,1,2,…' above
'1,0.5,…'). A first row whose values mix words and numbers is data, so a typo there is refused,
not taken for a header. Rows and columns count from 1; a row's number is its line in the file,
as a spreadsheet numbers it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import DataError, Raw
from .encoding import missing_label
from .safety import regular_file

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass
class Table:
    """The data rows of a text file, as strings, the header left out."""
    name: str                   # the file's name, for messages
    rows: list[list[str]]       # the fields of each row
    lines: list[int]            # the row number (line in the file) of each row

    def check_width(self) -> int:
        """The number of columns, refused unless every row has as many as the first."""
        width = len(self.rows[0])
        for row, line in zip(self.rows, self.lines):
            if len(row) < width:
                raise DataError(f"expected a value in row {line}, column {len(row) + 1} of {self.name} "
                                f"(row {self.lines[0]} has {width} columns), got the end of the row")
            if len(row) > width:
                raise DataError(f"expected row {line} of {self.name} to end at column {width}, as row "
                                f"{self.lines[0]} does, got a value in column {width + 1}: {row[width]!r}")
        return width

    def numbers(self, first_column: int = 0) -> np.ndarray:
        """(N, width - first_column) float64: every field from ``first_column`` (0-based) on, in
        rows of one width (see check_width)."""
        values = []
        for row, line in zip(self.rows, self.lines):
            try:
                values.append([float(field) for field in row[first_column:]])
            except ValueError:
                column = next(c for c in range(first_column, len(row)) if not is_number(row[c]))
                found = repr(row[column]) if row[column] else "an empty field"
                raise DataError(f"expected a number in row {line}, column {column + 1} of {self.name}, "
                                f"got {found}") from None
        return np.array(values, dtype=np.float64)

    def first_column(self) -> list[str]:
        return [row[0] for row in self.rows]


def read_table(path: Path) -> Table:
    """The rows of a .csv, .tsv or .txt file, split into fields, its header (if any) left out."""
    numbered = []                                   # (line, text) of every line that is not blank
    with open(regular_file(path), encoding="utf-8-sig", errors="replace") as handle:   # -sig: Excel's mark
        for line, text in enumerate(handle, start=1):
            if text.strip():
                numbered.append((line, text.rstrip("\r\n")))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else "," if numbered and "," in numbered[0][1] else None
    rows = [_fields(text, delimiter, line, path.name) for line, text in numbered]
    lines = [line for line, _ in numbered]
    if rows and is_header(rows[0], rows[1] if len(rows) > 1 else None):
        rows, lines = rows[1:], lines[1:]
    return Table(path.name, rows, lines)


def read_labelled_table(path: Path) -> Raw:
    """(N, L) float64 values and N labels: each row holds its label, then its values."""
    table = read_table(path)
    if not table.rows:
        return np.empty((0, 0)), []                 # refused as empty with the split it is
    table.check_width()
    labels = table.first_column()
    for label, line in zip(labels, table.lines):
        if not label:
            raise DataError(f"expected a label in row {line}, column 1 of {table.name}, got an empty field")
    missing = missing_label(labels)                 # named here by its row in the file
    if missing is not None:
        raise DataError(f"expected a finite number as the label in row {table.lines[missing]}, column 1 of "
                        f"{table.name}, got {labels[missing]!r}")
    return table.numbers(first_column=1), labels


def is_header(first: list[str], second: list[str] | None) -> bool:
    """Whether the first row of a table names its columns instead of holding data (see the module's notes)."""
    numbers = [is_number(field) for field in first]
    if all(numbers):
        return False
    if not any(numbers[1:]):                        # 'label,t1,t2,…'
        return True
    # values all numbers under a word: a header above numeric labels ('label,1,2' above '1,0.5,…'),
    # data above word labels ('cat,0.5,…' above 'dog,0.7,…')
    return all(numbers[1:]) and second is not None and is_number(second[0])


def is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _fields(text: str, delimiter: str | None, line: int, name: str) -> list[str]:
    if delimiter is None:
        return text.split()
    try:                                            # the csv module: fields in quotes may hold the delimiter
        fields = [field.strip() for field in next(csv.reader([text], delimiter=delimiter))]
    except csv.Error as error:                      # a field longer than the csv module's limit (128 KB)
        raise DataError(f"expected fields of at most {csv.field_size_limit():,} characters in row {line} of "
                        f"{name}, got one that fails to split ({error})") from None
    if len(fields) > 1 and fields[-1] == "":       # a delimiter closing the row
        fields.pop()
    return fields
