"""CBIS-DDSM -> canonical form.

Download layout (TCIA, NBIA Data Retriever)::

    ROOT/mass_case_description_{train,test}_set.csv   ROOT/calc_case_description_{train,test}_set.csv
    ROOT/CBIS-DDSM/<Subject>/<study date-id>/<series number-description>/1-1.dcm ...

CSV columns (mass): patient_id, breast_density, left or right breast, image view, abnormality id,
abnormality type, mass shape, mass margins, assessment, pathology, subtlety, image file path,
cropped image file path, ROI mask file path. The calc CSVs say ``breast density`` (with a space) and
have calc type, calc distribution instead of the mass descriptors.

Format facts honoured:

* Path cells (``Mass-Training_P_00001_LEFT_CC/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm``) can
  carry spaces and newlines, and downloaded folders are renamed by the retriever, so files are matched
  on the **SeriesInstanceUID** read from every DICOM header (``stop_before_pixels``); a path that exists
  as written under ROOT is used directly.
* Full image, crop and ROI mask sit in sibling series; the crop and the mask of one abnormality often
  share a series folder in either order. The mask is the candidate of the full image's size whose
  pixels are binary; a binary mask of another size is reported and the image left out (never
  stretched). Candidates that differ only in size are never taken for a mask.
* One image can carry several abnormalities (rows) and can appear in both the mass and calc CSVs; all
  land on one image record.
* Masses: box and polygons from the ROI mask. Calcifications: the ROI mask outlines the cluster region;
  ``calc type`` VASCULAR -> "vessel", otherwise typed by
  :func:`common.calcifications.classify_component` (large regions are "large").
* An image with an unusable abnormality (no mask, size mismatch, unreadable) is left out: its ground
  truth would be incomplete. The official train/test membership is kept as ``source_split``; the
  canonical split is a fresh patient-level 60/20/20 (paper §3.3).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from tqdm import tqdm

from common.dicom import pixel_spacing as dicom_pixel_spacing
from common.dicom import read_dicom_header
from common.errors import InputError
from datasets.calc_mask import CalcMask
from datasets.converter import ConvertedImage, Converter
from datasets.shapes import mask_bbox, mask_polygons
from datasets.tables import ConversionReport, int_or_none, path_inside, read_table, require_columns

PATH_COLUMNS = ("image file path", "cropped image file path", "ROI mask file path")
COMMON = ("patient_id", "left or right breast", "image view", "abnormality id", *PATH_COLUMNS)
DENSITY_COLUMNS = ("breast_density", "breast density")  # mass CSV / calc CSV
PATHOLOGY_RANK = {"MALIGNANT": 3, "BENIGN": 2, "BENIGN_WITHOUT_CALLBACK": 1}
_TABLE = re.compile(r"^(mass|calc)_case_description_(train|test)_set\.csv$", re.IGNORECASE)
_UID = re.compile(r"^\d+(\.\d+)+$")


def clean_path(cell: str) -> str:
    """A CSV path cell without whitespace (spaces, newlines) and with forward slashes."""
    return re.sub(r"\s+", "", cell).replace("\\", "/").strip("/")


def series_uid(cell: str) -> str | None:
    """The SeriesInstanceUID in a path cell: the UID-looking folder right above the file name."""
    parts = clean_path(cell).split("/")
    uids = [p for p in parts[:-1] if _UID.match(p)]
    return uids[-1] if uids else None


class DicomIndex:
    """Every DICOM under a folder, by SeriesInstanceUID, with its size (headers only)."""

    def __init__(self, root: Path, report: ConversionReport, verbose: bool = True):
        self.by_series: dict[str, list[dict]] = {}
        files = [p for p in root.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file()]
        for path in tqdm(sorted(files), desc="cbis_ddsm headers", disable=not verbose):
            try:
                ds = read_dicom_header(path)
                entry = {
                    "path": path,
                    "shape": (int(ds.Rows), int(ds.Columns)),
                    "pixel_spacing": dicom_pixel_spacing(ds),
                }
                self.by_series.setdefault(str(ds.SeriesInstanceUID), []).append(entry)
            except Exception as e:
                report.warning(path, f"DICOM skipped while indexing ({e})")

    def files(self, uid: str | None) -> list[dict]:
        return list(self.by_series.get(uid, [])) if uid else []


def _binary_mask(path: Path) -> np.ndarray | None:
    """Pixels as bool when the file holds a binary mask (at most two values, some non-zero)."""
    pixels = pydicom.dcmread(str(path)).pixel_array
    values = np.unique(pixels)
    if values.size > 2 or values.max() <= 0:
        return None
    return pixels > values.min() if values.size == 2 else pixels > 0


def find_roi_mask(
    row: dict, shape: tuple[int, int], index: DicomIndex
) -> tuple[np.ndarray | None, str]:
    """The abnormality's ROI mask (bool, ``shape``) or None with the reason."""
    candidates: dict[Path, dict] = {}
    for col in ("ROI mask file path", "cropped image file path"):
        for f in index.files(series_uid(row[col])):
            candidates[f["path"]] = f
    if not candidates:
        uid = series_uid(row["ROI mask file path"])
        return None, f"no DICOM with the ROI mask's SeriesInstanceUID {uid}"
    same = [f for f in candidates.values() if f["shape"] == shape]
    for f in same:
        mask = _binary_mask(f["path"])
        if mask is not None:
            return mask, ""
    for f in candidates.values():
        if f["shape"] != shape and _binary_mask(f["path"]) is not None:
            r, c = f["shape"]
            return None, (
                f"ROI mask {f['path'].name} is {c}x{r} but the image is {shape[1]}x{shape[0]};"
                " not stretched"
            )
    return None, "no binary ROI mask among " + ", ".join(sorted(p.name for p in candidates))


def _resolve_full(root: Path, row: dict, index: DicomIndex) -> dict | None:
    cell = clean_path(row["image file path"])
    files = index.files(series_uid(cell))
    try:
        direct = path_inside(root, root, cell)  # never a file outside --root
    except ValueError:
        direct = None
    if direct is not None and direct.is_file():
        for f in files:
            if Path(os.path.abspath(f["path"])) == direct:
                return f
    return files[0] if len(files) == 1 else None


class CbisDdsmConverter(Converter):
    """CBIS-DDSM: the case CSVs, full images and ROI masks matched by SeriesInstanceUID."""

    name, title = "cbis_ddsm", "CBIS-DDSM"

    def images(self) -> Iterator[ConvertedImage]:
        tables = sorted(p for p in self.root.rglob("*.csv") if _TABLE.match(p.name))
        if not tables:
            raise InputError(
                self.root, "no {mass,calc}_case_description_{train,test}_set.csv found"
            )
        index = DicomIndex(self.root, self.report, self.verbose)
        groups = self._group_by_image(tables, index)
        for path, g in self.progress(groups.items(), "cbis_ddsm images"):
            converted = self._image(path, g, index)
            if converted is not None:
                yield converted

    def _group_by_image(self, tables: list[Path], index: DicomIndex) -> dict[Path, dict]:
        """Abnormality rows of every table, grouped by the full image's DICOM path (table order)."""
        groups: dict[Path, dict] = {}
        for table in tables:
            kind, source_split = _TABLE.match(table.name).groups()
            kind = kind.lower()
            rows = read_table(table)
            require_columns(table, rows, COMMON)
            density_col = next((c for c in DENSITY_COLUMNS if rows and c in rows[0][1]), None)
            if density_col is None and rows:
                raise InputError(table, f"no density column (expected one of {DENSITY_COLUMNS})")
            for rownum, row in rows:
                full = _resolve_full(self.root, row, index)
                if full is None:
                    uid = series_uid(row["image file path"])
                    self.report.error(
                        table, f"no full-image DICOM with SeriesInstanceUID {uid}", rownum
                    )
                    continue
                g = groups.setdefault(
                    full["path"],
                    {
                        "full": full,
                        "rows": [],
                        "folder": clean_path(row["image file path"]).split("/")[0],
                    },
                )
                g["rows"].append((table, rownum, kind, source_split.lower(), density_col, row))
        return groups

    def _image(self, path: Path, g: dict, index: DicomIndex) -> ConvertedImage | None:
        """One full image with all its abnormalities; None (reported) when one is unusable."""
        shape = g["full"]["shape"]
        first = g["rows"][0][5]
        image = {
            "file_name": str(path.resolve()),
            "stem": None,  # only images that convert take a stem
            "height": shape[0],
            "width": shape[1],
            "patient_id": first["patient_id"],
            "laterality": {"LEFT": "L", "RIGHT": "R"}.get(first["left or right breast"].upper()),
            "view": first["image view"].upper() or None,
            "pixel_spacing": g["full"]["pixel_spacing"],
            "density": None,
            "pathology": None,
            "source_split": g["rows"][0][3],
        }
        calc = CalcMask(shape)
        masses, usable = [], True
        for table, rownum, kind, _, density_col, row in g["rows"]:
            density = int_or_none(row.get(density_col, ""))
            if density in (1, 2, 3, 4):
                image["density"] = density
            pathology = row.get("pathology", "").upper() or None
            if PATHOLOGY_RANK.get(pathology, 0) > PATHOLOGY_RANK.get(image["pathology"], 0):
                image["pathology"] = pathology
            try:
                mask, why = find_roi_mask(row, shape, index)
            except Exception as e:
                mask, why = None, f"unreadable ROI mask ({e})"
            if mask is None:
                self.report.error(
                    table, f"abnormality {row['abnormality id']}: {why}; image left out", rownum
                )
                usable = False
                continue
            if kind == "mass":
                masses.append(
                    {
                        "bbox": mask_bbox(mask),
                        "area": float(mask.sum()),
                        "segmentation": mask_polygons(mask),
                        "pathology": pathology,
                        "shape": row.get("mass shape") or None,
                        "margins": row.get("mass margins") or None,
                        "assessment": int_or_none(row.get("assessment", "")),
                        "subtlety": int_or_none(row.get("subtlety", "")),
                        "abnormality_id": row["abnormality id"],
                    }
                )
            else:
                vascular = "VASCULAR" in row.get("calc type", "").upper()
                calc.add_mask(mask, "vessel" if vascular else None)
        if not usable:
            return None
        image["stem"] = self.unique_stem(f"cbis_ddsm_{g['folder']}")
        return ConvertedImage(image, masses, calc)


convert = CbisDdsmConverter.convert  # convert(root, out, seed=0, hash_files=True, ...) -> summary
main = CbisDdsmConverter.main  # python -m datasets.cbis_ddsm --root RAW --out OUT [...]


if __name__ == "__main__":
    raise SystemExit(main())
