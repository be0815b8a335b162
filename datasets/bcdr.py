"""BCDR (Breast Cancer Digital Repository) -> canonical form.

Download layout: one folder per subset (``BCDR-D01_dataset``, ``BCDR-D02_dataset``, ``BCDR-F01_dataset``,
...), each with ``bcdr_<subset>_outlines.csv`` and TIFF images under ``patient_<p>/study_<s>/``. ``--root``
may be one subset folder or a folder holding several; every ``bcdr_*_outlines.csv`` below it is read.

Outline CSV columns: patient_id, study_id, series, lesion_id, segmentation_id, image_view,
image_filename, lw_x_points, lw_y_points, mammography_type, mammography_nodule,
mammography_calcification, mammography_microcalcification, mammography_axillary_adenopathy,
mammography_architectural_distortion, mammography_stroma_distortion, age, density, classification.

Format facts honoured:

* cells carry leading spaces (`` 1``, `` Benign``, `` patient_3/study_6/img_3_6_1_LCC.tif``);
  ``lw_x_points`` / ``lw_y_points`` are space-separated outline coordinates (x = column, y = row,
  top-left origin) with a leading space;
* one row per outline; its lesion flags say what it is: ``mammography_nodule`` -> mass (box + polygon),
  ``mammography_calcification`` / ``mammography_microcalcification`` -> calcification mask filled from
  the outline (typed by :func:`common.calcifications.classify_component`); rows with only other flags
  (adenopathy, distortions) keep their image, lesion noted;
* ``image_view`` 1-4 = RCC, LCC, RMLO, LMLO;
* density 1-4 (BI-RADS), sometimes missing; classification Benign / Malign -> BENIGN / MALIGNANT.

BCDR patient ids are used as they are across subsets: if two subsets reuse a number for different women,
they only end up in the same split, which never leaks a patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import InputError
from datasets.calc_mask import CalcMask
from datasets.converter import ConvertedImage, Converter
from datasets.shapes import coordinates_problem, leaves_image, outline_mass
from datasets.tables import image_size, int_or_none, path_inside, read_table, require_columns

VIEWS = {1: ("R", "CC"), 2: ("L", "CC"), 3: ("R", "MLO"), 4: ("L", "MLO")}
MASS_FLAGS = ("mammography_nodule",)
CALC_FLAGS = ("mammography_calcification", "mammography_microcalcification")
OTHER_FLAGS = (
    "mammography_axillary_adenopathy",
    "mammography_architectural_distortion",
    "mammography_stroma_distortion",
)
REQUIRED = ("patient_id", "image_view", "image_filename", "lw_x_points", "lw_y_points")
PATHOLOGY = {"benign": "BENIGN", "malign": "MALIGNANT", "malignant": "MALIGNANT"}


def parse_points(xs: str, ys: str) -> np.ndarray:
    """(N, 2) float (x, y) outline from the two space-separated cells; ValueError when malformed or
    not finite (``nan``, ``inf``)."""
    try:
        x = [float(v) for v in xs.split()]
        y = [float(v) for v in ys.split()]
    except ValueError as e:
        raise ValueError(f"not a number ({e})") from None
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x coordinates but {len(y)} y coordinates")
    if not x:
        raise ValueError("empty outline")
    pts = np.stack([x, y], axis=1)
    if not np.isfinite(pts).all():
        x0, y0 = pts[np.flatnonzero(~np.isfinite(pts).all(axis=1))[0]]
        raise ValueError(f"non-finite coordinate ({x0:g}, {y0:g})")
    return pts


def _flag(row: dict, name: str) -> bool:
    value = row.get(name, "").strip()
    try:
        return float(value) > 0
    except ValueError:
        return value.lower() in ("true", "yes")


class BcdrConverter(Converter):
    """BCDR: every ``bcdr_*_outlines.csv`` under the root, one outline per row, TIFF images."""

    name, title = "bcdr", "BCDR"

    def images(self) -> Iterator[ConvertedImage]:
        tables = sorted(self.root.rglob("bcdr_*_outlines.csv"))
        if not tables:
            raise InputError(self.root, "no bcdr_*_outlines.csv found")
        images: dict[Path, dict] = {}  # image path -> record (+ private keys while converting)
        left_out: set[Path] = set()  # images with an unusable lesion row: incomplete ground truth
        for table in tables:
            self._read_table(table, images, left_out)
        # calcification outlines are rasterised per image at the end (memory)
        for path, image in images.items():
            if image.get("_bad") or path in left_out:
                continue
            calc = CalcMask((image["height"], image["width"]))
            for table, rownum, pts in image.pop("_calc"):
                added = calc.add_polygon(pts) if len(pts) >= 3 else calc.add_points(pts, None)
                if not added:
                    self.report.error(
                        table,
                        f"calcification outline outside the image; {path.name} left out",
                        rownum,
                    )
                    left_out.add(path)
            if path in left_out:
                continue
            masses = image.pop("_masses")
            yield ConvertedImage(image, masses, calc)

    def _read_table(self, table: Path, images: dict[Path, dict], left_out: set[Path]) -> None:
        """Add the rows of one outline CSV to ``images`` (records with ``_masses`` and ``_calc``
        outlines, or ``{"_bad": True}`` for an unreadable file); images with an unusable lesion row
        go to ``left_out``."""
        subset = re.sub(r"^bcdr_|_outlines$", "", table.stem, flags=re.IGNORECASE).lower()
        rows = read_table(table)
        require_columns(table, rows, REQUIRED)
        seen_lesions: set[tuple] = set()
        for rownum, row in self.progress(rows, f"bcdr {subset}"):
            name = row["image_filename"].strip().lstrip("/\\")
            if not name:
                self.report.error(table, "empty image_filename", rownum)
                continue
            candidates, why = [], None  # relative to the table's folder, else to --root
            for base in (table.parent, self.root):
                try:
                    candidates.append(path_inside(self.root, base, name))
                except ValueError as e:
                    why = str(e)
            if not candidates:  # never a file outside --root
                self.report.error(table, f"image_filename: {why}; row skipped", rownum)
                continue
            path = next((c for c in candidates if c.is_file()), candidates[0])
            if not path.is_file():
                self.report.error(table, f"image {name} not found", rownum)
                continue
            try:
                pts = parse_points(row["lw_x_points"], row["lw_y_points"])
            except ValueError as e:
                self.report.error(
                    table, f"bad lw_x_points/lw_y_points: {e}; {name} left out", rownum
                )
                left_out.add(path)
                continue
            is_mass = any(_flag(row, f) for f in MASS_FLAGS)
            is_calc = any(_flag(row, f) for f in CALC_FLAGS)

            image = images.get(path)
            if image is None:
                image = images[path] = self._record(path, subset, table, rownum, row)
            if image.get("_bad"):
                continue
            h, w = image["height"], image["width"]
            pathology = PATHOLOGY.get(row.get("classification", "").strip().lower())
            if pathology == "MALIGNANT" or (pathology and image["pathology"] is None):
                image["pathology"] = pathology

            lesion_key = (path, row.get("lesion_id"), is_mass, is_calc)
            if row.get("lesion_id") and lesion_key in seen_lesions:
                self.report.warning(
                    table, f"second outline of lesion {row['lesion_id']} on {name}; skipped", rownum
                )
                continue
            seen_lesions.add(lesion_key)
            if not (is_mass or is_calc):
                flags = [f for f in OTHER_FLAGS if _flag(row, f)]
                self.report.note(table, f"lesion {flags or 'without flags'} not converted", rownum)
                continue
            problem = coordinates_problem(pts, (h, w))
            if problem:
                self.report.error(
                    table, f"lw_x_points/lw_y_points: {problem}; {name} left out", rownum
                )
                left_out.add(path)
                continue
            if leaves_image(pts, (h, w)):
                self.report.warning(table, f"outline leaves the {w}x{h} image; clipped", rownum)
            if is_mass:
                mass = outline_mass(pts, (h, w))
                if mass is None:
                    self.report.error(
                        table,
                        f"mass outline ({len(pts)} points) unusable or outside; {name} left out",
                        rownum,
                    )
                    left_out.add(path)
                else:
                    image["_masses"].append(
                        {**mass, "pathology": pathology, "lesion_id": row.get("lesion_id")}
                    )
            if is_calc:
                image["_calc"].append((table, rownum, pts))

    def _record(self, path: Path, subset: str, table: Path, rownum: int, row: dict) -> dict:
        """The image record of ``path`` from its first row (``{"_bad": True}`` when unreadable)."""
        try:
            h, w = image_size(path)
        except Exception as e:
            self.report.error(path, f"unreadable image ({e})")
            return {"_bad": True}
        view_code = int_or_none(row["image_view"])
        laterality, view = VIEWS.get(view_code, (None, None))
        if view_code not in VIEWS:
            self.report.warning(table, f"image_view {row['image_view']!r} not in 1-4", rownum)
        density = int_or_none(row.get("density", ""))
        return {
            "file_name": str(path.resolve()),
            "stem": self.unique_stem(f"bcdr_{subset}_{path.stem}"),
            "height": h,
            "width": w,
            "patient_id": f"bcdr_{row['patient_id']}",
            "laterality": laterality,
            "view": view,
            "pixel_spacing": None,
            "density": density if density in (1, 2, 3, 4) else None,
            "pathology": None,
            "subset": subset,
            "_masses": [],
            "_calc": [],  # outlines, rasterised per image at the end (memory)
        }


convert = BcdrConverter.convert  # convert(root, out, seed=0, hash_files=True, ...) -> summary
main = BcdrConverter.main  # python -m datasets.bcdr --root RAW --out OUT [...]


if __name__ == "__main__":
    raise SystemExit(main())
