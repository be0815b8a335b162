"""INbreast -> canonical form.

Download layout (``INbreast Release 1.0``)::

    ROOT/INbreast.csv     semicolon-separated: Patient ID;Patient age;Laterality;View;Acquisition date;
                          File Name;ACR;Bi-Rads
    ROOT/AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|ML|MLO>_ANON.dcm
    ROOT/AllXML/<File Name>.xml    OsiriX ROI plist, only for images with findings

Format facts honoured:

* ``Patient ID`` is blanked ("removed") in the CSV; the patient is the second token of the DICOM file
  name (an anonymised hash shared by all images of one woman), else the DICOM PatientID.
* DICOM names *start with* the CSV's ``File Name``; the XML is named after it.
* Annotations: plist ``Images[0].ROIs[]``, each with ``Name`` and ``Point_px`` strings ``"(x, y)"``
  (x = column, y = row, top-left origin, sub-pixel floats).
* ``Mass`` ROIs are outlines -> box + polygon. ``Calcification`` ROIs are mostly one- or two-point
  marks -> small raw discs typed "dot" (calc_seg dilates them to 900 px later); larger calcification
  outlines are filled and typed by :func:`datasets.canonical.classify_component`. ``Cluster`` ROIs
  outline a group of calcifications -> filled, typed "large". Other ROI names (Spiculated Region,
  Distortion, Asymmetry, ...) are noted, not converted.
* ``ACR`` (1-4) -> density; ``Bi-Rads`` kept as ``birads``; pixel spacing from the DICOM header.
"""

from __future__ import annotations

import math
import plistlib
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.errors import InputError
from datasets.canonical import (
    CalcMask,
    ConversionReport,
    clip_bbox,
    convert_staged,
    converter_main,
    coordinates_problem,
    dicom_pixel_spacing,
    finish_conversion,
    points_bbox,
    polygon_area,
    read_dicom_header,
    read_table,
    require_columns,
    unique_stem,
)

REQUIRED = ("File Name", "Laterality", "View")
MASS_NAMES = {"mass"}
CALC_NAMES = {"calcification", "calcifications"}
CLUSTER_NAMES = {"cluster"}
_POINT = re.compile(r"^\(?\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)(?:\s*,\s*[-+0-9.eE]+)?\s*\)?$")


def parse_point(text: str) -> tuple[float, float]:
    """``"(x, y)"`` -> (x, y); ValueError when malformed."""
    m = _POINT.match(str(text).strip())
    if not m:
        raise ValueError(f"not an '(x, y)' point: {text!r}")
    try:
        x, y = float(m.group(1)), float(m.group(2))
    except ValueError:
        raise ValueError(f"not an '(x, y)' point: {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"non-finite coordinate in point {text!r}")
    return x, y


def read_rois(path: Path) -> list[dict]:
    """ROIs of an OsiriX plist: ``[{"name", "points" (N, 2) float (x, y) or None, "error"}]``
    (``name`` None for an entry that is not a ROI dictionary).

    Raises :class:`InputError` when the file is not a plist with ``Images[0].ROIs``.
    """
    try:
        with open(path, "rb") as f:
            plist = plistlib.load(f)
        rois = plist["Images"][0].get("ROIs", [])
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as e:
        raise InputError(path, f"not an OsiriX ROI plist with Images[0].ROIs ({e})") from None
    if not isinstance(rois, list):
        raise InputError(path, f"Images[0].ROIs is a {type(rois).__name__}, not a list")
    out = []
    for roi in rois:
        if not isinstance(roi, dict):
            out.append({"name": None, "points": None, "error": "ROI is not a dictionary"})
            continue
        name = str(roi.get("Name", "")).strip()
        try:
            points = roi.get("Point_px", [])
            if not isinstance(points, list):
                raise ValueError("Point_px is not a list")
            pts = np.array([parse_point(p) for p in points], float).reshape(-1, 2)
            if len(pts) == 0:
                raise ValueError("no Point_px")
            out.append({"name": name, "points": pts, "error": None})
        except (TypeError, ValueError) as e:
            out.append({"name": name, "points": None, "error": str(e)})
    return out


def _find_csv(root: Path) -> Path:
    if (root / "INbreast.csv").is_file():
        return root / "INbreast.csv"
    found = sorted(p for p in root.rglob("*.csv") if p.name.lower() == "inbreast.csv")
    if not found:
        raise InputError(root, "no INbreast.csv found")
    return found[0]


def _file_key(value: str) -> str:
    value = value.strip()
    return value[:-2] if re.fullmatch(r"\d+\.0", value) else value


def convert(
    root: str | Path,
    out: str | Path,
    seed: int = 0,
    hash_files: bool = True,
    verbose: bool = True,
    overwrite: bool = False,
) -> dict:
    """Convert an INbreast download at ``root`` into the canonical folder ``out``; returns a summary.

    ``out`` must be missing or empty unless ``overwrite`` (see
    :func:`datasets.canonical.convert_staged`).
    """
    return convert_staged(_convert, root, out, overwrite, seed, hash_files, verbose)


def _convert(root: Path, out: Path, seed: int, hash_files: bool, verbose: bool) -> dict:
    report = ConversionReport("inbreast")
    table = _find_csv(root)
    rows = read_table(table, delimiter=";")
    require_columns(table, rows, REQUIRED)

    dicoms: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() == ".dcm" and p.is_file():
            dicoms.setdefault(p.name.split("_")[0], []).append(p)
    xmls = {p.stem: p for p in root.rglob("*") if p.suffix.lower() == ".xml"}

    images, mass_anns, calc_anns = [], [], []
    used_stems: set[str] = set()
    for rownum, row in tqdm(rows, desc="inbreast", disable=not verbose):
        key = _file_key(row["File Name"])
        found = dicoms.get(key, [])
        if len(found) != 1:
            why = "no DICOM" if not found else f"{len(found)} DICOMs"
            report.error(table, f"{why} whose name starts with File Name {key!r}", rownum)
            continue
        path = found[0]
        try:
            ds = read_dicom_header(path)
            h, w = int(ds.Rows), int(ds.Columns)
        except Exception as e:
            report.error(path, f"unreadable DICOM header ({e})")
            continue
        parts = path.stem.split("_")
        patient = parts[1] if len(parts) > 2 and parts[1] else str(getattr(ds, "PatientID", key))
        acr = row.get("ACR", "")
        image = {
            "id": len(images) + 1,
            "file_name": str(path.resolve()),
            "stem": unique_stem(f"inbreast_{key}", used_stems),
            "height": h,
            "width": w,
            "patient_id": f"inbreast_{patient}",
            "laterality": row["Laterality"].upper() or None,
            "view": row["View"].upper() or None,
            "pixel_spacing": dicom_pixel_spacing(ds),
            "density": int(acr) if acr in ("1", "2", "3", "4") else None,
            "birads": row.get("Bi-Rads") or None,
            "pathology": None,
        }
        calc = CalcMask((h, w))
        image_masses = []
        xml = xmls.get(key)
        if xml is not None:
            try:
                rois = read_rois(xml)
            except InputError as e:
                report.error(xml, f"{e.reason}; image left out (ground truth unknown)")
                continue
            unusable = False
            for k, roi in enumerate(rois):
                where = f"ROI {k}"
                if roi["name"] is None:  # unknown kind: the ground truth is incomplete
                    report.error(xml, f"{roi['error']}; image left out", where)
                    unusable = True
                    continue
                kind = roi["name"].lower()
                if kind not in MASS_NAMES | CALC_NAMES | CLUSTER_NAMES:
                    report.note(xml, f"ROI named {roi['name']!r} not converted", where)
                    continue
                pts = roi["points"]
                if pts is None:
                    report.error(xml, f"{roi['name']}: {roi['error']}; image left out", where)
                    unusable = True
                    continue
                problem = coordinates_problem(pts, (h, w))
                if problem:
                    report.error(xml, f"{roi['name']}: {problem}; image left out", where)
                    unusable = True
                    continue
                if np.any(pts < -0.5) or np.any(pts[:, 0] > w - 0.5) or np.any(pts[:, 1] > h - 0.5):
                    report.warning(xml, f"{roi['name']} leaves the {w}x{h} image; clipped", where)
                if kind in MASS_NAMES:
                    box = clip_bbox(points_bbox(pts), (h, w)) if len(pts) >= 3 else None
                    if box is None:
                        report.error(
                            xml, f"mass outline ({len(pts)} points) unusable; image left out", where
                        )
                        unusable = True
                        continue
                    image_masses.append(
                        {
                            "image_id": image["id"],
                            "bbox": box,
                            "area": polygon_area(pts),
                            "segmentation": [pts.reshape(-1).tolist()],
                        }
                    )
                elif kind in CLUSTER_NAMES:
                    added = calc.add_polygon(pts, "large")
                elif len(pts) <= 2:
                    added = calc.add_points(pts, "dot")
                else:
                    added = calc.add_polygon(pts)
                if kind not in MASS_NAMES and not added:
                    report.error(xml, f"{roi['name']} outside the image; image left out", where)
                    unusable = True
            if unusable:
                continue
        mass_anns += image_masses
        calc_anns += calc.finish(out, image)
        images.append(image)

    return finish_conversion(
        out, root, "INbreast", images, mass_anns, calc_anns, seed, report, hash_files, verbose
    )


def main(argv=None) -> int:
    return converter_main(convert, "Convert INbreast into the canonical dataset form.", argv)


if __name__ == "__main__":
    raise SystemExit(main())
