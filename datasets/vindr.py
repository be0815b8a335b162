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
  boxes become filled box masks typed by :func:`datasets.canonical.classify_component` (small boxes
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
from pathlib import Path

from tqdm import tqdm

from common.errors import InputError
from datasets.canonical import (
    CalcMask,
    ConversionReport,
    clip_bbox,
    convert_staged,
    converter_main,
    dicom_pixel_spacing,
    int_or_none,
    path_inside,
    patient_split,
    read_dicom_header,
    read_table,
    require_columns,
    unique_stem,
    write_canonical,
)

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


def convert(
    root: str | Path,
    out: str | Path,
    seed: int = 0,
    hash_files: bool = True,
    verbose: bool = True,
    overwrite: bool = False,
) -> dict:
    """Convert a VinDr-Mammo download at ``root`` into the canonical folder ``out``; returns a summary.

    ``out`` must be missing or empty unless ``overwrite`` (see
    :func:`datasets.canonical.convert_staged`).
    """
    return convert_staged(_convert, root, out, overwrite, seed, hash_files, verbose)


def _convert(root: Path, out: Path, seed: int, hash_files: bool, verbose: bool) -> dict:
    report = ConversionReport("vindr")
    tables = sorted(root.rglob("finding_annotations.csv"))
    if not tables:
        raise InputError(root, "no finding_annotations.csv found")
    table = tables[0]
    base = table.parent
    rows = read_table(table)
    require_columns(table, rows, REQUIRED)
    by_image: dict[str, list[tuple[int, dict]]] = {}
    for rownum, row in rows:
        by_image.setdefault(row["image_id"], []).append((rownum, row))
    others = None  # lazily built index of DICOMs by file stem, for renamed layouts

    images, mass_anns, calc_anns = [], [], []
    used_stems: set[str] = set()
    for image_id, image_rows in tqdm(by_image.items(), desc="vindr", disable=not verbose):
        first_row, first = image_rows[0]
        try:  # the table names the file: never one outside --root
            study = first["study_id"]
            path = path_inside(
                root, base / "images", f"{study}/{image_id}.dicom" if study else f"{image_id}.dicom"
            )
        except ValueError as e:
            report.error(
                table, f"image {image_id}: study_id/image_id {e}; image skipped", first_row
            )
            continue
        if not path.is_file():
            if others is None:
                others = {
                    p.stem: p for p in base.rglob("*") if p.suffix.lower() in (".dicom", ".dcm")
                }
            path = others.get(image_id)
        if path is None:
            report.error(
                table,
                f"image {image_id}: no DICOM images/{first['study_id']}/{image_id}.dicom",
                first_row,
            )
            continue
        try:
            ds = read_dicom_header(path)
            h, w = int(ds.Rows), int(ds.Columns)
        except Exception as e:
            report.error(path, f"unreadable DICOM header ({e})")
            continue
        csv_h, csv_w = int_or_none(first.get("height")), int_or_none(first.get("width"))
        if csv_h is not None and csv_w is not None and (csv_h, csv_w) != (h, w):
            report.error(
                table,
                f"image {image_id}: CSV size {csv_w}x{csv_h} but DICOM {w}x{h}; image left out",
                first_row,
            )
            continue
        published = first["split"].strip().lower()
        if published not in ("training", "test"):
            report.warning(
                table, f"split {first['split']!r} not training/test; taken as training", first_row
            )
        image = {
            "id": len(images) + 1,
            "file_name": str(path.resolve()),
            "stem": None,
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
                report.error(table, f"image {image_id}: {e}; image left out", rownum)
                usable = False
                continue
            for cat in cats:
                if cat not in (MASS, CALC, NO_FINDING):
                    report.note(table, f"image {image_id}: {cat!r} not converted", rownum)
            if not wanted:
                continue
            clipped = clip_bbox(box, (h, w))
            if clipped is None:
                report.error(
                    table, f"image {image_id}: box outside the {w}x{h} image; left out", rownum
                )
                usable = False
                continue
            if clipped != box:
                report.warning(table, f"image {image_id}: box clipped to the {w}x{h} image", rownum)
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
            continue
        image["stem"] = unique_stem(f"vindr_{image_id}", used_stems)
        mass_anns += [{**m, "image_id": image["id"]} for m in masses]
        calc_anns += calc.finish(out, image)
        images.append(image)

    if not images:
        raise InputError(root, "no image could be converted")
    # honour the published split; a study listed in both goes entirely to test
    test_patients = {im["patient_id"] for im in images if im["source_split"] == "test"}
    train_patients = {im["patient_id"] for im in images} - test_patients
    by_patient = patient_split(train_patients, seed, TRAIN_VAL_RATIOS)
    for im in images:
        p = im["patient_id"]
        im["split"] = (
            "test" if p in test_patients else {"test": "val"}.get(by_patient[p], by_patient[p])
        )
    summary = write_canonical(
        out,
        images,
        mass_anns,
        calc_anns,
        seed,
        report,
        ratios=TRAIN_VAL_RATIOS,
        hash_files=hash_files,
        info={
            "source": "VinDr-Mammo",
            "root": str(root.resolve()),
            "split": "published test kept; published training split 75/25 into train/val",
        },
    )
    if verbose:
        report.print_summary()
    return summary


def main(argv=None) -> int:
    return converter_main(convert, "Convert VinDr-Mammo into the canonical dataset form.", argv)


if __name__ == "__main__":
    raise SystemExit(main())
