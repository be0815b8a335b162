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
  outlines are filled and typed by :func:`common.calcifications.classify_component`. ``Cluster`` ROIs
  outline a group of calcifications -> filled, typed "large". Other ROI names (Spiculated Region,
  Distortion, Asymmetry, ...) are noted, not converted.
* ``ACR`` (1-4) -> density; ``Bi-Rads`` kept as ``birads``; pixel spacing from the DICOM header.
"""

from __future__ import annotations

import math
import plistlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.dicom import pixel_spacing as dicom_pixel_spacing
from common.dicom import read_dicom_header
from common.errors import InputError
from datasets.calc_mask import CalcMask
from datasets.converter import ConvertedImage, Converter
from datasets.shapes import coordinates_problem, leaves_image, outline_mass
from datasets.tables import read_table, require_columns

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


class InbreastConverter(Converter):
    """INbreast: INbreast.csv rows, DICOMs found by file-name prefix, OsiriX ROI plists."""

    name, title = "inbreast", "INbreast"

    def images(self) -> Iterator[ConvertedImage]:
        table = _find_csv(self.root)
        rows = read_table(table, delimiter=";")
        require_columns(table, rows, REQUIRED)
        dicoms: dict[str, list[Path]] = {}
        for p in self.root.rglob("*"):
            if p.suffix.lower() == ".dcm" and p.is_file():
                dicoms.setdefault(p.name.split("_")[0], []).append(p)
        xmls = {p.stem: p for p in self.root.rglob("*") if p.suffix.lower() == ".xml"}
        for rownum, row in self.progress(rows):
            key = _file_key(row["File Name"])
            found = dicoms.get(key, [])
            if len(found) != 1:
                why = "no DICOM" if not found else f"{len(found)} DICOMs"
                self.report.error(table, f"{why} whose name starts with File Name {key!r}", rownum)
                continue
            converted = self._image(key, row, found[0], xmls.get(key))
            if converted is not None:
                yield converted

    def _image(self, key: str, row: dict, path: Path, xml: Path | None) -> ConvertedImage | None:
        """The image of one CSV row with the ROIs of its XML; None (reported) when unusable."""
        try:
            ds = read_dicom_header(path)
            h, w = int(ds.Rows), int(ds.Columns)
        except Exception as e:
            self.report.error(path, f"unreadable DICOM header ({e})")
            return None
        parts = path.stem.split("_")
        patient = parts[1] if len(parts) > 2 and parts[1] else str(getattr(ds, "PatientID", key))
        acr = row.get("ACR", "")
        image = {
            "file_name": str(path.resolve()),
            "stem": self.unique_stem(f"inbreast_{key}"),
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
        masses: list[dict] = []
        if xml is not None and not self._add_rois(xml, (h, w), masses, calc):
            return None
        return ConvertedImage(image, masses, calc)

    def _add_rois(self, xml: Path, shape: tuple[int, int], masses: list, calc: CalcMask) -> bool:
        """Add the mass and calcification ROIs of ``xml`` to ``masses`` / ``calc``; False (reported)
        when one of them is unusable, so the image's ground truth would be incomplete."""
        h, w = shape
        try:
            rois = read_rois(xml)
        except InputError as e:
            self.report.error(xml, f"{e.reason}; image left out (ground truth unknown)")
            return False
        usable = True
        for k, roi in enumerate(rois):
            where = f"ROI {k}"
            if roi["name"] is None:  # unknown kind: the ground truth is incomplete
                self.report.error(xml, f"{roi['error']}; image left out", where)
                usable = False
                continue
            kind = roi["name"].lower()
            if kind not in MASS_NAMES | CALC_NAMES | CLUSTER_NAMES:
                self.report.note(xml, f"ROI named {roi['name']!r} not converted", where)
                continue
            pts = roi["points"]
            if pts is None:
                self.report.error(xml, f"{roi['name']}: {roi['error']}; image left out", where)
                usable = False
                continue
            problem = coordinates_problem(pts, shape)
            if problem:
                self.report.error(xml, f"{roi['name']}: {problem}; image left out", where)
                usable = False
                continue
            if leaves_image(pts, shape):
                self.report.warning(xml, f"{roi['name']} leaves the {w}x{h} image; clipped", where)
            if kind in MASS_NAMES:
                mass = outline_mass(pts, shape)
                if mass is None:
                    self.report.error(
                        xml, f"mass outline ({len(pts)} points) unusable; image left out", where
                    )
                    usable = False
                    continue
                masses.append(mass)
            elif kind in CLUSTER_NAMES:
                added = calc.add_polygon(pts, "large")
            elif len(pts) <= 2:
                added = calc.add_points(pts, "dot")
            else:
                added = calc.add_polygon(pts)
            if kind not in MASS_NAMES and not added:
                self.report.error(xml, f"{roi['name']} outside the image; image left out", where)
                usable = False
        return usable


convert = InbreastConverter.convert  # convert(root, out, seed=0, hash_files=True, ...) -> summary
main = InbreastConverter.main  # python -m datasets.inbreast --root RAW --out OUT [...]


if __name__ == "__main__":
    raise SystemExit(main())
