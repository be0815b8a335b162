"""Writing the canonical dataset form (schema and reader: :mod:`common.canonical`).

Layout of a canonical dataset folder ``OUT/``::

    masses.json          COCO detection file, category 1 = "mass"
    calcifications.json  COCO file, category 1 = "calcification", one annotation per 8-connected
                         component of the calcification mask, with ``calc_type`` and ``point``
    calc_masks/<stem>.png  uint8 0/255 calcification masks (same size as the image)
    split.json           patient-level train/val/test split with a SHA-256 per image file
    conversion_report.json  the converter's per-row problems
    images/<stem>.<ext>  images written into the folder (the synthetic DICOMs; MIAS PGMs re-encoded as
                         PNG, which the loaders read); the other converters reference the download's
                         files by absolute path

Image records (shared by both COCO files) carry ``id``, ``file_name`` (relative to ``OUT`` or absolute),
``stem`` (unique, names masks and prediction files), ``height``, ``width``, ``patient_id``,
``laterality`` ("L"/"R"/None), ``view`` ("CC", "MLO", ...), ``pixel_spacing`` ([row_mm, col_mm] or None),
``density`` (BI-RADS 1-4 or None), ``split`` and, in ``calcifications.json``, ``mask_file``.
Boxes are ``[x, y, w, h]`` in original image pixels, top-left origin, x along columns.

Besides the split helpers this module holds what the converters (``datasets/<source>.py``) share:
shape rasterisation (polygons, circles, points, boxes -> bool masks), :class:`CalcMask` (one image's
calcification mask plus the types its source states) and :func:`calc_components` (8-connected
components typed "dot" / "vessel" / "large" by :mod:`common.calcifications`),
:class:`ConversionReport` (per-row problems, ``conversion_report.json``), :func:`read_table`, the guards against hostile tables (:func:`coordinates_problem`, :func:`path_inside`),
and :func:`staged_output` / :func:`write_canonical` / :func:`converter_main` (the common output and CLI).

Output folder rules (every converter): ``--out`` must be missing or empty unless ``--overwrite`` is
given; a conversion is written into a hidden staging folder next to ``OUT`` and only moved into place
when it succeeded, so a failed conversion never touches ``OUT``; with ``--overwrite`` only the files the
canonical layout owns (:func:`owned_files`) are replaced or removed, anything else in ``OUT`` stays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from common.calcifications import describe_components, label_components
from common.canonical import (  # noqa: F401  (the schema, re-exported for the converters)
    CALC_CATEGORIES,
    CALC_TYPES,
    CANONICAL_FILES,
    MASK_DIR,
    MASS_CATEGORIES,
    SPLITS,
    resolve_file,
)
from common.dicom import pixel_spacing as dicom_pixel_spacing  # noqa: F401
from common.dicom import read_dicom_header  # noqa: F401
from common.io import atomic_write_json, sha256_file

DEFAULT_RATIOS = (0.6, 0.2, 0.2)  # paper §3.3: 60 / 20 / 20


def patient_split(
    patient_ids: Iterable[str], seed: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> dict[str, str]:
    """Assign every patient to one split.

    The unique ids are sorted, shuffled with ``numpy.random.default_rng(seed)`` and cut by ``ratios``
    (rounded, remainder to the last split), so the result depends only on the set of ids and the seed.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    ids = sorted({str(p) for p in patient_ids})
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(ratios[0] * len(ids)))
    n_val = int(round(ratios[1] * len(ids)))
    n_val = min(n_val, len(ids) - n_train)
    out = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def write_split_json(
    out_dir: str | Path,
    images: Sequence[dict],
    seed: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    hash_files: bool = True,
) -> Path:
    """Write ``OUT/split.json`` from image records that already carry ``split`` and ``patient_id``.

    Raises ``ValueError`` when a patient appears in two splits.
    """
    out_dir = Path(out_dir)
    patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    files = {}
    for im in images:
        patients[im["split"]].add(str(im["patient_id"]))
        path = resolve_file(out_dir, im["file_name"])
        files[im["file_name"]] = {
            "split": im["split"],
            "patient_id": str(im["patient_id"]),
            "sha256": sha256_file(path) if hash_files and path.exists() else None,
        }
    shared = (
        (patients["train"] & patients["val"])
        | (patients["train"] & patients["test"])
        | (patients["val"] & patients["test"])
    )
    if shared:
        raise ValueError(f"patients in more than one split: {sorted(shared)[:5]}")
    return atomic_write_json(
        out_dir / "split.json",
        {
            "seed": seed,
            "ratios": list(ratios),
            "patients": {s: sorted(patients[s]) for s in SPLITS},
            "images": files,
        },
    )


# --------------------------------------------------------------------------------------------------
# Shapes -> masks and boxes. Every coordinate here is (x, y) = (column, row) in original image pixels,
# top-left origin; masks are bool (H, W).

POINT_RADIUS = 2  # px; a point annotation becomes a small disc, calc_seg dilates it to 900 px later


def _as_points(points) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(pts)):
        raise ValueError("non-finite coordinate")
    return pts


def coordinates_problem(points, shape: tuple[int, int]) -> str | None:
    """Why (x, y) points of a table or ROI file cannot be used on an (H, W) image, or None.

    Non-finite coordinates (``nan``, ``1e999``) and coordinates farther outside the image than one image
    size (no annotation tool produces them: the row is corrupt) are problems; points a little outside
    are not (the shapes are clipped to the image). Malformed input gives a reason, never an exception.
    """
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return "coordinates are not (x, y) numbers"
    if pts.size == 0:
        return "no coordinates"
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        x, y = pts[np.flatnonzero(bad)[0]]
        return f"non-finite coordinate ({x:g}, {y:g})"
    h, w = shape
    far = (pts[:, 0] < -w) | (pts[:, 0] > 2 * w) | (pts[:, 1] < -h) | (pts[:, 1] > 2 * h)
    if far.any():
        x, y = pts[np.flatnonzero(far)[0]]
        return f"coordinate ({x:g}, {y:g}) far outside the {w}x{h} image"
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


def polygon_to_mask(points, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a closed polygon outline ``(N, 2)`` (x, y) into a bool (H, W) mask with cv2.fillPoly.

    The outline itself is drawn too, so one- or two-pixel-wide polygons are never empty. Parts
    outside the image are clipped.
    """

    mask = np.zeros(shape, np.uint8)
    pts = np.round(_as_points(points)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1)
    cv2.polylines(mask, [pts], True, 1)
    return mask.astype(bool)


def circle_to_mask(center, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """Filled disc of ``radius`` px around ``center`` (x, y), clipped to the image; bool (H, W)."""
    h, w = shape
    cx, cy = (float(v) for v in center)
    yy, xx = np.ogrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= float(radius) ** 2


def points_to_mask(points, shape: tuple[int, int], radius: int = POINT_RADIUS) -> np.ndarray:
    """Small discs (``radius`` px) at each (x, y) point, joined by a line when there are two.

    Raw point marks (INbreast's one- and two-point calcification ROIs); calc_seg dilates them later.
    """

    mask = np.zeros(shape, np.uint8)
    pts = np.round(_as_points(points)).astype(np.int32)
    for x, y in pts:
        cv2.circle(mask, (int(x), int(y)), int(radius), 1, thickness=-1)
    if len(pts) == 2:
        cv2.line(mask, tuple(map(int, pts[0])), tuple(map(int, pts[1])), 1, thickness=1)
    return mask.astype(bool)


def box_to_mask(bbox, shape: tuple[int, int]) -> np.ndarray:
    """Filled box ``[x, y, w, h]`` (pixels it overlaps), clipped to the image; bool (H, W)."""
    h, w = shape
    x, y, bw, bh = (float(v) for v in bbox)
    mask = np.zeros(shape, bool)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
    mask[y0:y1, x0:x1] = True
    return mask


def mask_bbox(mask: np.ndarray) -> list[float] | None:
    """``[x, y, w, h]`` covering every True pixel (pixel edges: w = last col - first col + 1)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [
        float(cols[0]),
        float(rows[0]),
        float(cols[-1] - cols[0] + 1),
        float(rows[-1] - rows[0] + 1),
    ]


def points_bbox(points) -> list[float]:
    """``[x, y, w, h]`` of the extent of (x, y) points (outline coordinates, not pixel edges)."""
    pts = _as_points(points)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def polygon_area(points) -> float:
    """Area enclosed by a polygon outline (x, y) in px² (shoelace formula)."""
    pts = _as_points(points)
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2.0)


def clip_bbox(bbox, shape: tuple[int, int]) -> list[float] | None:
    """Clip ``[x, y, w, h]`` to an (H, W) image; None when nothing of it is inside."""
    h, w = shape
    x, y, bw, bh = (float(v) for v in bbox)
    x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
    x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (flat [x0, y0, x1, y1, ...]) of the outer contours of a bool mask."""

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


# --------------------------------------------------------------------------------------------------
# Calcification components


_TYPE_CODE = {None: 0, "dot": 1, "vessel": 2, "large": 3}  # higher code wins inside one component
_CODE_TYPE = {v: k for k, v in _TYPE_CODE.items()}


def calc_components(mask: np.ndarray, type_map: np.ndarray | None = None) -> list[dict]:
    """Split a calcification mask into 8-connected components (:mod:`common.calcifications`).

    Args:
        mask: bool (H, W).
        type_map: optional uint8 (H, W) of source type codes (0 none, 1 dot, 2 vessel, 3 large) as
            painted by :class:`CalcMask`; a component takes the highest code under it, components with
            none are typed by :func:`common.calcifications.classify_component`.

    Returns:
        One dict per component, in label order: ``bbox`` [x, y, w, h] (pixel edges), ``area`` (px),
        ``calc_type``, ``point`` [x, y] (a pixel of the component).
    """
    labels, n = label_components(mask)
    stated = {}
    if n and type_map is not None:
        codes = ndi.maximum(type_map, labels, index=np.arange(1, n + 1))
        stated = {i: _CODE_TYPE[int(c)] for i, c in enumerate(codes, start=1) if int(c)}
    return [
        {
            "bbox": [float(v) for v in c["bbox"]],
            "area": float(c["area"]),
            "calc_type": c["type"],
            "point": c["point"],
        }
        for c in describe_components(labels, n, types=stated)
    ]


class CalcMask:
    """Accumulates the calcification shapes of one image into a mask plus the source types.

    Each ``add_*`` takes an optional ``calc_type`` the source states ("dot", "vessel", "large");
    shapes without one are typed per component by :func:`classify_component`. ``add_*`` return the
    number of pixels the shape covers inside the image (0 = entirely outside).
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.mask = np.zeros(self.shape, bool)
        self.types = np.zeros(self.shape, np.uint8)

    def add_mask(self, mask: np.ndarray, calc_type: str | None = None) -> int:
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image {self.shape}")
        if calc_type is not None and calc_type not in CALC_TYPES:
            raise ValueError(f"calc_type must be one of {CALC_TYPES}, got {calc_type!r}")
        self.mask |= mask
        code = _TYPE_CODE[calc_type]
        if code:
            np.maximum(self.types, np.where(mask, code, 0).astype(np.uint8), out=self.types)
        return int(mask.sum())

    def add_polygon(self, points, calc_type: str | None = None) -> int:
        return self.add_mask(polygon_to_mask(points, self.shape), calc_type)

    def add_circle(self, center, radius: float, calc_type: str | None = None) -> int:
        return self.add_mask(circle_to_mask(center, radius, self.shape), calc_type)

    def add_points(self, points, calc_type: str | None = "dot", radius: int = POINT_RADIUS) -> int:
        return self.add_mask(points_to_mask(points, self.shape, radius), calc_type)

    def add_box(self, bbox, calc_type: str | None = None) -> int:
        return self.add_mask(box_to_mask(bbox, self.shape), calc_type)

    @property
    def empty(self) -> bool:
        return not self.mask.any()

    def components(self) -> list[dict]:
        return calc_components(self.mask, self.types)

    def finish(self, out_dir: str | Path, image: dict) -> list[dict]:
        """Write the mask of ``image`` (when not empty), set its ``mask_file``, return annotations."""
        if self.empty:
            image["mask_file"] = None
            return []
        image["mask_file"] = self.write(out_dir, image["stem"])
        return [{"image_id": image["id"], **c} for c in self.components()]

    def write(self, out_dir: str | Path, stem: str) -> str:
        """Write ``OUT/calc_masks/<stem>.png`` (uint8 0/255); returns the OUT-relative name."""
        from common.io import atomic_write_png

        rel = f"calc_masks/{stem}.png"
        atomic_write_png(Path(out_dir) / rel, self.mask.astype(np.uint8) * 255)
        return rel


# --------------------------------------------------------------------------------------------------
# Conversion bookkeeping


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
        import sys

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


def read_table(path: str | Path, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file as ``(row, {column: value})`` with names and values stripped of whitespace.

    ``row`` is the 1-based record number as a spreadsheet shows it (header = 1, first data row = 2),
    which stays right when quoted cells span several lines. Handles a UTF-8 BOM and falls back to
    Latin-1. Raises :class:`InputError` when the file is missing or has no header.
    """
    import csv

    from common.errors import InputError

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
    """Raise :class:`InputError` naming the missing columns of a table."""
    from common.errors import InputError

    if rows_or_header and isinstance(rows_or_header[0], tuple):
        have = set(rows_or_header[0][1])
    else:
        have = set(rows_or_header)
    missing = [c for c in columns if c not in have]
    if missing and rows_or_header:
        raise InputError(path, f"missing column(s) {missing}; found {sorted(have)}")


def check_root(root: str | Path) -> Path:
    """``root`` as a Path; :class:`InputError` when it is not an existing folder."""
    from common.errors import InputError

    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "download folder not found")
    return root


def unique_stem(name: str, used: set[str]) -> str:
    """A file-name-safe version of ``name`` not in ``used`` (suffix _2, _3... on clashes); adds it."""
    import re

    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"
    stem, k = base, 2
    while stem in used:
        stem, k = f"{base}_{k}", k + 1
    used.add(stem)
    return stem


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a DICOM / TIFF / PGM / PNG file from its header, without decoding pixels."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

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


# --------------------------------------------------------------------------------------------------
# Writing a canonical folder



def _inside(top: Path, rel: str) -> Path | None:
    """``top / rel`` when ``rel`` is a relative path that stays inside ``top`` (lexically), else None."""
    if not rel or Path(rel).is_absolute():
        return None
    path = Path(os.path.normpath(top / rel))
    return path if os.path.commonpath([str(top), str(path)]) == str(top) and path != top else None


def owned_files(out: str | Path) -> set[Path]:
    """Files of an existing folder that the canonical layout owns (what ``--overwrite`` may replace).

    These are the four JSON files (:data:`CANONICAL_FILES`), the PNGs directly under ``calc_masks/``
    and the files the folder's COCO files reference by a relative path inside the folder (images and
    masks written into it by a converter or the synthetic generator). Absolute references (the raw
    download) and anything else in the folder are never included.
    """
    import json

    out = Path(os.path.abspath(out))
    files = {out / name for name in CANONICAL_FILES}
    if (out / MASK_DIR).is_dir() and not (out / MASK_DIR).is_symlink():
        files |= set((out / MASK_DIR).glob("*.png"))
    for name in ("masses.json", "calcifications.json"):
        try:
            coco = json.loads((out / name).read_text(encoding="utf-8"))
            records = coco["images"]
        except Exception:  # missing or not ours: it references nothing we may delete
            continue
        for im in records if isinstance(records, list) else []:
            if not isinstance(im, dict):
                continue
            for key in ("file_name", "mask_file"):
                path = _inside(out, im.get(key)) if isinstance(im.get(key), str) else None
                if path is not None:
                    files.add(path)
    real = os.path.realpath(out)

    def in_out(f: Path) -> bool:
        """Removing ``f`` only changes a folder inside OUT (not one reached through a symlink)."""
        parent = os.path.realpath(f.parent)
        return os.path.commonpath([real, parent]) == real

    return {f for f in files if (f.is_symlink() or f.is_file()) and in_out(f)}


def check_out(out: str | Path, root: str | Path | None = None, overwrite: bool = False) -> Path:
    """``out`` as a Path after the output folder rules; :class:`InputError` naming it otherwise.

    ``out`` must not exist, or be an empty folder, or (with ``overwrite``) a folder; it must not be
    the download folder ``root`` or a folder holding it.
    """
    from common.errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if root is not None:
        top, src = os.path.abspath(out), os.path.abspath(root)
        if os.path.commonpath([top, src]) == top:
            raise InputError(out, f"output folder is or holds the download folder {root}")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InputError(
                out,
                f"output folder is not empty ({len(entries)} entries: {shown}); choose a new folder"
                " or pass --overwrite to replace the canonical dataset files in it",
            )
    return out


def _publish(work: Path, out: Path) -> None:
    """Move the finished conversion in ``work`` to ``out`` (see :func:`staged_output`)."""
    from common.errors import InputError

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp made it 0700
    if not out.exists() or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        try:
            os.replace(work, out)  # atomic: OUT appears complete
            return
        except OSError:  # e.g. OUT is a mount point: move file by file below
            pass
    out.mkdir(parents=True, exist_ok=True)
    new = sorted(p.relative_to(work) for p in work.rglob("*") if p.is_file())
    for rel in new:  # check everything before moving anything
        dest = out / rel
        if dest.is_symlink() or (dest.exists() and not dest.is_file()):
            raise InputError(dest, "is not a plain file; the conversion will not replace it")
        for parent in rel.parents:
            if parent != Path(".") and (out / parent).exists() and not (out / parent).is_dir():
                raise InputError(out / parent, "is a file where the conversion needs a folder")
    stale = owned_files(out) - {Path(os.path.abspath(out / rel)) for rel in new}
    last = {"split.json": 2}  # data files first, then the JSON files, split.json last
    order = sorted(new, key=lambda r: (last.get(str(r), 1 if r.suffix == ".json" else 0), str(r)))
    for rel in order:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work / rel), str(dest))
    for path in stale:  # earlier canonical files the new dataset does not reference
        path.unlink(missing_ok=True)


@contextmanager
def staged_output(
    out: str | Path, root: str | Path | None = None, overwrite: bool = False
) -> Iterator[Path]:
    """Context of one conversion: yields a fresh staging folder to write the whole dataset into.

    Checks ``out`` first (:func:`check_out`). The staging folder is hidden next to ``out`` (same file
    system); when the block ends without an exception its content is moved to ``out`` (a rename of the
    whole folder when ``out`` does not exist yet); with ``overwrite``, files of ``out`` that the
    canonical layout owns (:func:`owned_files`) and the new dataset does not rewrite are removed, and
    nothing else in ``out`` is touched. On an exception ``out`` is left as it was. The staging folder is
    always removed.

    Image records must name files written into the staging folder by a path relative to it
    (``images/<stem>.png``), so they stay right after the move.
    """
    target = Path(os.path.abspath(check_out(out, root, overwrite)))
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".converting", dir=target.parent)
    )
    try:
        yield work
        _publish(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert_staged(
    convert: Callable[..., dict], root: str | Path, out: str | Path, overwrite: bool, *args
) -> dict:
    """A converter's ``convert()``: ``convert(root, staging_folder, *args)`` writes the whole dataset
    into a staging folder that replaces ``out`` only when it succeeds (:func:`staged_output`; ``out``
    must be missing or empty unless ``overwrite``). Returns its summary with ``"out"`` the real folder.
    """
    root = check_root(root)
    with staged_output(out, root, overwrite) as work:
        summary = convert(root, work, *args)
    return {**summary, "out": str(out)}


def build_coco(images: Sequence[dict], annotations: Sequence[dict], categories: list[dict]) -> dict:
    """COCO dict with annotation ids 1..N (annotations need ``image_id``, ``bbox``; ``area`` optional)."""
    anns = []
    for i, a in enumerate(annotations, start=1):
        ann = {"id": i, "image_id": a["image_id"], "category_id": 1, "iscrowd": 0}
        ann.update({k: v for k, v in a.items() if k not in ("id", "image_id")})
        ann["bbox"] = [float(v) for v in ann["bbox"]]
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        anns.append(ann)
    return {"images": list(images), "annotations": anns, "categories": categories}


def write_canonical(
    out_dir: str | Path,
    images: Sequence[dict],
    mass_annotations: Sequence[dict],
    calc_annotations: Sequence[dict],
    seed: int,
    report: ConversionReport | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    hash_files: bool = True,
    info: dict | None = None,
    prune_masks: bool = True,
) -> dict:
    """Write masses.json, calcifications.json, split.json (and conversion_report.json).

    With ``prune_masks``, PNGs under ``OUT/calc_masks`` that no image references (left by an earlier
    run into the same folder) are deleted, so the folder always describes one conversion. (The
    converters write into a fresh staging folder, see :func:`staged_output`, so for them there is
    nothing to prune.)

    ``images`` are full image records (``id``, ``file_name``, ``stem``, ``height``, ``width``,
    ``patient_id``, ``split``, ... and ``mask_file`` or None); ``mass_annotations`` /
    ``calc_annotations`` reference them by ``image_id``. Calcification records keep ``mask_file``; the
    mass file's records leave it out. Returns a summary dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = list(images)
    for im in images:
        if im.get("split") not in SPLITS:
            raise ValueError(f"image {im.get('stem')} has no valid split")
    calc_images = [{**im, "mask_file": im.get("mask_file")} for im in images]
    mass_images = [{k: v for k, v in im.items() if k != "mask_file"} for im in images]
    masses = build_coco(mass_images, mass_annotations, MASS_CATEGORIES)
    calcs = build_coco(calc_images, calc_annotations, CALC_CATEGORIES)
    if info:
        masses["info"] = calcs["info"] = info
    if prune_masks:  # masks left by an earlier conversion into the same folder
        keep = {Path(im["mask_file"]).name for im in images if im.get("mask_file")}
        for old in (out_dir / "calc_masks").glob("*.png"):
            if old.name not in keep:
                old.unlink()
    atomic_write_json(out_dir / "masses.json", masses)
    atomic_write_json(out_dir / "calcifications.json", calcs)
    write_split_json(out_dir, images, seed, ratios, hash_files=hash_files)

    summary = {
        "out": str(out_dir),
        "images": len(images),
        "patients": len({im["patient_id"] for im in images}),
        "mass_annotations": len(masses["annotations"]),
        "calc_annotations": len(calcs["annotations"]),
        "images_with_masses": len({a["image_id"] for a in masses["annotations"]}),
        "images_with_calc_masks": sum(im.get("mask_file") is not None for im in images),
        "split_images": {s: sum(im["split"] == s for im in images) for s in SPLITS},
        "calc_types": {
            t: sum(a["calc_type"] == t for a in calcs["annotations"]) for t in CALC_TYPES
        },
    }
    if report is not None:
        report.save(out_dir)
        summary["dataset"] = report.dataset
        summary["problems"] = report.counts()
    return summary


def assign_splits(
    images: Sequence[dict], seed: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> None:
    """Set ``split`` on every image record from :func:`patient_split` of their ``patient_id``."""
    by_patient = patient_split([im["patient_id"] for im in images], seed, ratios)
    for im in images:
        im["split"] = by_patient[str(im["patient_id"])]


def int_or_none(value) -> int | None:
    """A table cell as an integer ("3", "3.0"), or None when blank or not a number."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def finish_conversion(
    out_dir: str | Path,
    root: str | Path,
    source: str,
    images: list[dict],
    mass_annotations: Sequence[dict],
    calc_annotations: Sequence[dict],
    seed: int,
    report: ConversionReport,
    hash_files: bool = True,
    verbose: bool = True,
) -> dict:
    """Common end of a converter: patient-level split, canonical files, problem summary.

    Raises :class:`~common.errors.InputError` (naming ``root``) when no image could be converted.
    """
    from common.errors import InputError

    if not images:
        raise InputError(root, "no image could be converted")
    assign_splits(images, seed)
    summary = write_canonical(
        out_dir,
        images,
        mass_annotations,
        calc_annotations,
        seed,
        report,
        hash_files=hash_files,
        info={"source": source, "root": str(Path(root).resolve())},
    )
    if verbose:
        report.print_summary()
    return summary


def converter_main(convert, description: str, argv: Sequence[str] | None = None) -> int:
    """Command line shared by the converters: ``--root DOWNLOAD_DIR --out OUT_DIR [--seed S]
    [--overwrite]``.

    Prints the summary as JSON on stdout and the problem list on stderr; exit code 0 when the canonical
    folder was written (row-level problems are in conversion_report.json), 2 on an unusable download or
    an unusable ``--out`` (not empty without ``--overwrite``, see :func:`staged_output`).
    """
    import argparse
    import json
    import sys

    from common.errors import InputError

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="folder of the download, as published")
    parser.add_argument("--out", required=True, help="canonical dataset folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument(
        "--no-hash", action="store_true", help="skip the SHA-256 of every image in split.json"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out: replace its canonical dataset files (JSON files, "
        "calc_masks/, images it references); nothing else in it is touched",
    )
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.root,
            args.out,
            seed=args.seed,
            hash_files=not args.no_hash,
            overwrite=args.overwrite,
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
