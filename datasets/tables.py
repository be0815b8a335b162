"""Reading a download: its folder, tables, cells, file paths and image sizes, and the report of the
problems met on the way (``OUT/conversion_report.json``).

Hostile input is a row-level problem, never an exception: table paths are confined to ``--root``
(:func:`path_inside`), unreadable cells become None (:func:`int_or_none`). What makes the whole
download unusable (no folder, no header, missing columns) raises :class:`~common.errors.InputError`.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import tifffile
from PIL import Image

from common.dicom import read_dicom_header
from common.errors import InputError
from common.io import atomic_write_json


class ConversionReport:
    """Problems met while converting one dataset, each naming the file (and row) it comes from.

    Levels: "error" (a row or image was skipped), "warning" (converted, but something was changed or
    guessed), "note" (intentionally not converted, e.g. a lesion type the canonical form has no place
    for). ``row`` is the spreadsheet row of a table (header = 1) or a label such as "ROI 3". Saved as
    ``OUT/conversion_report.json``.
    """

    LEVELS = ("error", "warning", "note")

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.problems: list[dict] = []

    def add(self, level: str, file, message: str, row: int | str | None = None) -> None:
        if level not in self.LEVELS:
            raise ValueError(f"level must be one of {self.LEVELS}")
        self.problems.append(
            {
                "level": level,
                "file": None if file is None else str(file),
                "row": row,
                "message": message,
            }
        )

    def error(self, file, message: str, row=None) -> None:
        self.add("error", file, message, row)

    def warning(self, file, message: str, row=None) -> None:
        self.add("warning", file, message, row)

    def note(self, file, message: str, row=None) -> None:
        self.add("note", file, message, row)

    def counts(self) -> dict[str, int]:
        return {lvl: sum(p["level"] == lvl for p in self.problems) for lvl in self.LEVELS}

    @staticmethod
    def format(problem: dict) -> str:
        """One line: ``LEVEL file, row R: message``."""
        where = problem["file"] or "-"
        if problem["row"] is not None:
            where += f", row {problem['row']}"
        return f"{problem['level'].upper()} {where}: {problem['message']}"

    def lines(self) -> list[str]:
        return [self.format(p) for p in self.problems]

    def save(self, out_dir: str | Path) -> Path:
        return atomic_write_json(
            Path(out_dir) / "conversion_report.json",
            {"dataset": self.dataset, "counts": self.counts(), "problems": self.problems},
        )

    def print_summary(self, limit: int = 20, file=None) -> None:
        """The counts and the first ``limit`` problems, on ``file`` (default stderr)."""
        file = file or sys.stderr
        c = self.counts()
        print(
            f"{self.dataset}: {c['error']} errors, {c['warning']} warnings, {c['note']} notes",
            file=file,
        )
        for line in self.lines()[:limit]:
            print("  " + line, file=file)
        if len(self.problems) > limit:
            print(f"  ... {len(self.problems) - limit} more in conversion_report.json", file=file)


def check_root(root: str | Path) -> Path:
    """``root`` as a Path; :class:`InputError` when it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "download folder not found")
    return root


def read_table(path: str | Path, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file as ``(row, {column: value})`` with names and values stripped of whitespace.

    ``row`` is the 1-based record number as a spreadsheet shows it (header = 1, first data row = 2),
    which stays right when quoted cells span several lines. Handles a UTF-8 BOM and falls back to
    Latin-1. Raises :class:`InputError` when the file is missing or has no header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    records = list(csv.reader(text.splitlines(keepends=True), delimiter=delimiter))
    if not records or not any(c.strip() for c in records[0]):
        raise InputError(path, "empty file or no header row")
    header = [c.strip() for c in records[0]]
    rows = []
    for i, rec in enumerate(records[1:], start=2):
        if not any(c.strip() for c in rec):
            continue  # blank or ';;;;' line
        values = [c.strip() for c in rec] + [""] * (len(header) - len(rec))
        rows.append((i, dict(zip(header, values))))
    return rows


def require_columns(path, rows_or_header, columns: Sequence[str]) -> None:
    """Raise :class:`InputError` naming the missing columns of a table.

    ``rows_or_header``: the rows of :func:`read_table` or the column names; an empty table passes.
    """
    if rows_or_header and isinstance(rows_or_header[0], tuple):
        have = set(rows_or_header[0][1])
    else:
        have = set(rows_or_header)
    missing = [c for c in columns if c not in have]
    if missing and rows_or_header:
        raise InputError(path, f"missing column(s) {missing}; found {sorted(have)}")


def int_or_none(value) -> int | None:
    """A table cell as an integer ("3", "3.0"), or None when blank or not a number."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def path_inside(root: str | Path, base: str | Path, cell: str) -> Path:
    """``base / cell`` (a path written in a table), normalised; ValueError when it leaves ``root``.

    The test is lexical (``..`` components, absolute paths), so a download whose folders are symbolic
    links still works while a table cannot pull files from outside ``--root``.
    """
    text = str(cell).strip().replace("\\", "/")
    if not text or "\0" in text:
        raise ValueError(f"path {cell!r} is empty or not a path")
    if Path(text).is_absolute():
        raise ValueError(f"path {cell!r} is absolute; table paths must be relative to --root")
    top = os.path.abspath(root)
    path = os.path.normpath(os.path.join(os.path.abspath(base), text))
    if os.path.commonpath([top, path]) != top:
        raise ValueError(f"path {cell!r} points outside --root {root}")
    return Path(path)


def unique_stem(name: str, used: set[str]) -> str:
    """A file-name-safe version of ``name`` not in ``used`` (suffix _2, _3... on clashes); adds it."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"
    stem, k = base, 2
    while stem in used:
        stem, k = f"{base}_{k}", k + 1
    used.add(stem)
    return stem


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a DICOM / TIFF / PGM / PNG file from its header, without decoding pixels.

    Raises ValueError for a TIFF whose pixel data is cut off, and the reader's exception for a file it
    cannot parse.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape
            ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts)]
        size = path.stat().st_size
        if ends and max(ends) > size:  # header intact, pixel data cut off
            raise ValueError(
                f"truncated TIFF: pixel data runs to byte {max(ends)}, file has {size}"
            )
        return int(shape[0]), int(shape[1])
    if suffix in (".dcm", ".dicom", ""):
        ds = read_dicom_header(path)
        return int(ds.Rows), int(ds.Columns)
    with Image.open(path) as im:
        w, h = im.size
    return int(h), int(w)
