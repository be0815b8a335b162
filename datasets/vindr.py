"""VinDr-Mammo -> canonical form.

Download layout (PhysioNet ``vindr-mammo/1.0.0``)::

    ROOT/finding_annotations.csv   one row per finding (or one "No Finding" row per image)
    ROOT/images/<study_id>/<image_id>.dicom

``finding_annotations.csv`` columns: study_id, series_id, image_id, laterality, view_position, height,
width, breast_birads, breast_density, finding_categories, finding_birads, xmin, ymin, xmax, ymax, split.

Format facts honoured:

* ``finding_categories`` is a Python list literal (``"['Mass', 'Suspicious Calcification']"``), read
  with ``ast.literal_eval``; one row can be both a mass and a calcification.
* Boxes ``xmin, ymin, xmax, ymax`` are in original DICOM pixels -> ``[x, y, w, h]``. Calcification
  boxes become filled box masks typed by :func:`common.calcifications.classify_component` (small boxes
  "dot", big ones "large"); other categories (asymmetries, distortion, ...) are noted.
* DICOMs may be JPEG 2000 encoded: only headers are read (size check against the CSV's height/width,
  pixel spacing), never pixels.
* ``split`` is honoured: the published test set stays ``test``; the published training patients are
  split 75/25 into train/val (60/20 of the whole) by patient, seeded.
* No patient id is published; one study is one woman's exam, so ``study_id`` is the patient.
* ``breast_density`` "DENSITY A".."DENSITY D" -> 1..4; ``breast_birads`` kept as ``birads``.
* An image with an unusable finding row (bad list, bad box) is left out: its ground truth would be
  incomplete.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from pathlib import Path

from common.dicom import pixel_spacing as dicom_pixel_spacing
from common.dicom import read_dicom_header
from common.errors import InputError
from datasets.calc_mask import CalcMask
from datasets.converter import ConvertedImage, Converter
from datasets.shapes import clip_bbox
from datasets.splits import patient_split
from datasets.tables import int_or_none, path_inside, read_table, require_columns

REQUIRED = (
    "study_id",
    "image_id",
    "laterality",
    "view_position",
    "breast_density",
    "finding_categories",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
)
MASS = "Mass"
CALC = "Suspicious Calcification"
NO_FINDING = "No Finding"
DENSITY = {"DENSITY A": 1, "DENSITY B": 2, "DENSITY C": 3, "DENSITY D": 4}
TRAIN_VAL_RATIOS = (0.75, 0.25, 0.0)  # of the published training patients: 60/20 of the whole


def parse_categories(cell: str) -> list[str]:
    """``"['Mass', 'Suspicious Calcification']"`` -> list of str; ValueError when malformed."""
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"finding_categories {cell!r} is not a Python list") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"finding_categories {cell!r} is not a list of names")
    return [v.strip() for v in value]


def parse_box(row: dict) -> list[float]:
    """``[x, y, w, h]`` from xmin..ymax; ValueError when missing or empty."""
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        raise ValueError("box coordinates missing or not numbers") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError("box coordinates missing")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box xmin={x0:g} xmax={x1:g} ymin={y0:g} ymax={y1:g}")
    return [x0, y0, x1 - x0, y1 - y0]


class VindrConverter(Converter):
    """VinDr-Mammo: finding_annotations.csv rows grouped by image, boxes, headers-only DICOMs, the
    published test set kept."""

    name, title = "vindr", "VinDr-Mammo"
    ratios = TRAIN_VAL_RATIOS  # split.json records how the published training patients were split
    _others: dict[str, Path] | None = None  # DICOMs by file stem (renamed layouts), built on demand

    def images(self) -> Iterator[ConvertedImage]:
        tables = sorted(self.root.rglob("finding_annotations.csv"))
        if not tables:
            raise InputError(self.root, "no finding_annotations.csv found")
        table = tables[0]
        rows = read_table(table)
        require_columns(table, rows, REQUIRED)
        by_image: dict[str, list[tuple[int, dict]]] = {}
        for rownum, row in rows:
            by_image.setdefault(row["image_id"], []).append((rownum, row))
        for image_id, image_rows in self.progress(by_image.items()):
            converted = self._image(table, image_id, image_rows)
            if converted is not None:
                yield converted

    def _find_dicom(self, table: Path, image_id: str, first_row: int, first: dict) -> Path | None:
        """``images/<study_id>/<image_id>.dicom`` next to the table, else any DICOM named after the
        image under the table's folder; None (reported) when there is none."""
        base = table.parent
        try:  # the table names the file: never one outside --root
            study = first["study_id"]
            path = path_inside(
                self.root,
                base / "images",
                f"{study}/{image_id}.dicom" if study else f"{image_id}.dicom",
            )
        except ValueError as e:
            self.report.error(
                table, f"image {image_id}: study_id/image_id {e}; image skipped", first_row
            )
            return None
        if not path.is_file():
            if self._others is None:
                self._others = {
                    p.stem: p for p in base.rglob("*") if p.suffix.lower() in (".dicom", ".dcm")
                }
            path = self._others.get(image_id)
        if path is None:
            self.report.error(
                table,
                f"image {image_id}: no DICOM images/{first['study_id']}/{image_id}.dicom",
                first_row,
            )
        return path

    def _image(
        self, table: Path, image_id: str, image_rows: list[tuple[int, dict]]
    ) -> ConvertedImage | None:
        """One image with all its finding rows; None (reported) when the file or a row is unusable."""
        first_row, first = image_rows[0]
        path = self._find_dicom(table, image_id, first_row, first)
        if path is None:
            return None
        try:
            ds = read_dicom_header(path)
            h, w = int(ds.Rows), int(ds.Columns)
        except Exception as e:
            self.report.error(path, f"unreadable DICOM header ({e})")
            return None
        csv_h, csv_w = int_or_none(first.get("height")), int_or_none(first.get("width"))
        if csv_h is not None and csv_w is not None and (csv_h, csv_w) != (h, w):
            self.report.error(
                table,
                f"image {image_id}: CSV size {csv_w}x{csv_h} but DICOM {w}x{h}; image left out",
                first_row,
            )
            return None
        published = first["split"].strip().lower()
        if published not in ("training", "test"):
            self.report.warning(
                table, f"split {first['split']!r} not training/test; taken as training", first_row
            )
        image = {
            "file_name": str(path.resolve()),
            "stem": None,  # only images that convert take a stem
            "height": h,
            "width": w,
            "patient_id": f"vindr_{first['study_id']}",
            "laterality": first["laterality"].upper() or None,
            "view": first["view_position"].upper() or None,
            "pixel_spacing": dicom_pixel_spacing(ds),
            "density": DENSITY.get(first["breast_density"].upper()),
            "birads": first.get("breast_birads") or None,
            "pathology": None,  # VinDr gives BI-RADS assessments, no biopsy results
            "source_split": "test" if published == "test" else "training",
        }
        calc = CalcMask((h, w))
        masses, usable = [], True
        for rownum, row in image_rows:
            try:
                cats = parse_categories(row["finding_categories"])
                wanted = MASS in cats or CALC in cats
                box = parse_box(row) if wanted else None
            except ValueError as e:
                self.report.error(table, f"image {image_id}: {e}; image left out", rownum)
                usable = False
                continue
            for cat in cats:
                if cat not in (MASS, CALC, NO_FINDING):
                    self.report.note(table, f"image {image_id}: {cat!r} not converted", rownum)
            if not wanted:
                continue
            clipped = clip_bbox(box, (h, w))
            if clipped is None:
                self.report.error(
                    table, f"image {image_id}: box outside the {w}x{h} image; left out", rownum
                )
                usable = False
                continue
            if clipped != box:
                self.report.warning(
                    table, f"image {image_id}: box clipped to the {w}x{h} image", rownum
                )
            if MASS in cats:
                masses.append(
                    {
                        "bbox": clipped,
                        "area": clipped[2] * clipped[3],
                        "birads": row.get("finding_birads") or None,
                    }
                )
            if CALC in cats:
                calc.add_box(clipped)
        if not usable:
            return None
        image["stem"] = self.unique_stem(f"vindr_{image_id}")
        return ConvertedImage(image, masses, calc)

    def assign_splits(self, images: list[dict], seed: int) -> None:
        """The published test set stays ``test`` (a study listed in both goes entirely to test); the
        published training patients are split 75/25 into train/val."""
        test_patients = {im["patient_id"] for im in images if im["source_split"] == "test"}
        train_patients = {im["patient_id"] for im in images} - test_patients
        by_patient = patient_split(train_patients, seed, self.ratios)
        for im in images:
            p = im["patient_id"]
            im["split"] = (
                "test" if p in test_patients else {"test": "val"}.get(by_patient[p], by_patient[p])
            )

    def info(self) -> dict:
        return {
            **super().info(),
            "split": "published test kept; published training split 75/25 into train/val",
        }


convert = VindrConverter.convert  # convert(root, out, seed=0, hash_files=True, ...) -> summary
main = VindrConverter.main  # python -m datasets.vindr --root RAW --out OUT [...]


if __name__ == "__main__":
    raise SystemExit(main())
