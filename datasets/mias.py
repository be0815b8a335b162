"""mini-MIAS (Mammographic Image Analysis Society) -> canonical form.

Download layout (``all-mias``)::

    ROOT/Info.txt          one line per finding: ``REFNUM BG CLASS SEVERITY X Y RADIUS``
    ROOT/mdb001.pgm ...    1024 x 1024 8-bit PGM, 200 micron pixels, MLO views

Format facts honoured:

* Coordinates have their origin at the **bottom-left** corner: image row = H - 1 - Y (1023 - Y).
* A finding is a circle (centre, radius) enclosing it. Masses (CIRC, SPIC, MISC) become boxes around
  the circle; CALC circles enclose a whole cluster, so they become filled discs typed "large" (the
  paper's "large region" label type), not individual calcifications.
* ARCH (distortion) and ASYM (asymmetry) are neither masses nor calcifications: noted, not converted.
* Several lines can share a REFNUM (several findings on one image).
* Some findings have no coordinates (e.g. ``mdb219 G CALC B``, or ``* NOTE 3*``): an image whose mass
  or calcification has no location has incomplete ground truth and is left out (reported).
* Files come in pairs, one woman each: mdb001/mdb002 are one patient (the README: left = even,
  right = odd file numbers), so the split keeps pairs together.
* BG (F fatty, G fatty-glandular, D dense-glandular) is not a BI-RADS density: kept as ``tissue``,
  ``density`` is None. SEVERITY B/M -> pathology BENIGN/MALIGNANT.

Images: the loaders read PNG, TIFF and DICOM, not PGM, so every image is decoded here and written
losslessly as ``OUT/images/mias_<refnum>.png`` (8-bit, as in the source); ``file_name`` is that
relative path and ``source_file`` the PGM it came from. A file that does not decode completely
(truncated, not greyscale, constant) is reported and left out, and so is a REFNUM with two files of
that name under the root (both are named). An image with a finding whose centre lies outside it, or
whose radius is not positive or larger than the image, is left out (its ground truth is unknown), never
kept as lesion-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import InputError
from common.io import atomic_write_png
from datasets.calc_mask import CalcMask
from datasets.converter import ConvertedImage, Converter
from datasets.shapes import clip_bbox
from datasets.tables import ConversionReport

MINI_MIAS_SIZE = (1024, 1024)
PIXEL_SPACING_MM = [0.2, 0.2]  # mini-MIAS: 200 micron pixel edge
MASS_CLASSES = {"CIRC": "circumscribed", "SPIC": "spiculated", "MISC": "ill-defined"}
OTHER_CLASSES = {"ARCH": "architectural distortion", "ASYM": "asymmetry"}
CLASSES = {"CALC", "NORM", *MASS_CLASSES, *OTHER_CLASSES}
SEVERITY = {"B": "BENIGN", "M": "MALIGNANT"}
_REFNUM = re.compile(r"mdb(\d{3})", re.IGNORECASE)


def parse_info(path: Path, report: ConversionReport) -> dict[str, list[dict]]:
    """Findings per REFNUM: dicts {cls, severity, x, y, radius (None when absent), line}."""
    findings: dict[str, list[dict]] = {}
    text = path.read_text(encoding="latin-1")
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].upper() == "REFNUM":
            continue
        if not _REFNUM.fullmatch(tokens[0]):
            report.note(path, f"ignored line (not a finding): {line.strip()[:60]!r}", lineno)
            continue
        ref = tokens[0].lower()
        if len(tokens) < 3 or tokens[2].upper() not in CLASSES:
            report.error(
                path,
                f"{ref}: expected 'REFNUM BG CLASS ...', got {line.strip()!r}; image left out",
                lineno,
            )
            findings.setdefault(ref, []).append({"cls": None, "line": lineno})
            continue
        cls = tokens[2].upper()
        severity = tokens[3].upper() if len(tokens) > 3 and tokens[3].upper() in SEVERITY else None
        x = y = radius = None
        nums = tokens[4:7]
        if len(nums) == 3 and all(re.fullmatch(r"-?\d+(\.\d+)?", t) for t in nums):
            x, y, radius = (float(t) for t in nums)
        findings.setdefault(ref, []).append(
            {
                "cls": cls,
                "tissue": tokens[1].upper(),
                "severity": severity,
                "x": x,
                "y": y,
                "radius": radius,
                "line": lineno,
            }
        )
    return findings


def _find_info(root: Path) -> Path:
    for name in ("Info.txt", "info.txt", "INFO.TXT"):
        if (root / name).is_file():
            return root / name
    found = sorted(p for p in root.rglob("*") if p.name.lower() == "info.txt")
    if not found:
        raise InputError(root, "no Info.txt found (expected the all-mias download)")
    return found[0]


def read_pgm(path: Path) -> np.ndarray:
    """Pixels of a greyscale PGM, fully decoded: uint8 (or uint16 for a 16-bit PGM), (H, W).

    Raises ValueError (with the reason) for a truncated or undecodable file, a colour or bilevel
    image, or a constant one (nothing to train on; the loaders refuse it too).
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            im.load()  # decodes everything: a truncated file raises here
            pixels = np.asarray(im)
    except Exception as e:
        raise ValueError(f"not a complete image file ({type(e).__name__}: {e})") from None
    if pixels.ndim != 2 or mode not in ("L", "I", "I;16", "I;16B"):
        raise ValueError(f"not a greyscale PGM (mode {mode})")
    if pixels.dtype != np.uint8:
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(f"pixel values {pixels.min()}..{pixels.max()} do not fit 16 bits")
        pixels = pixels.astype(np.uint16)
    if pixels.size == 0 or pixels.min() == pixels.max():
        raise ValueError("constant image (every pixel the same value)")
    return pixels


class MiasConverter(Converter):
    """mini-MIAS: Info.txt findings (bottom-left origin) and PGM images, re-encoded as PNG."""

    name, title = "mias", "mini-MIAS"

    def images(self) -> Iterator[ConvertedImage]:
        info = _find_info(self.root)
        findings = parse_info(info, self.report)
        pgms: dict[str, list[Path]] = {}
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() == ".pgm" and p.is_file():
                pgms.setdefault(p.stem.lower(), []).append(p)
        for ref in sorted(set(pgms) - set(findings)):
            self.report.note(pgms[ref][0], f"{ref} is not listed in {info.name}; not converted")
        for ref in self.progress(sorted(findings)):
            converted = self._image(info, ref, findings[ref], pgms.get(ref, []))
            if converted is not None:
                yield converted

    def _image(
        self, info: Path, ref: str, rows: list[dict], found: list[Path]
    ) -> ConvertedImage | None:
        """The image ``ref`` with its findings ``rows``; its PNG is written into the output. None
        (reported) when the file or a finding is unusable."""
        first = rows[0]["line"]
        if any(r["cls"] is None for r in rows):
            return None  # reported by parse_info
        if not found:
            self.report.error(
                info, f"{ref}: image file {ref}.pgm not found under {self.root}", first
            )
            return None
        if len(found) > 1:
            names = " and ".join(str(p) for p in found)
            self.report.error(
                info, f"{ref}: {len(found)} image files {names}; image left out", first
            )
            return None
        path = found[0]
        unlocated = [r for r in rows if r["x"] is None and r["cls"] in {"CALC", *MASS_CLASSES}]
        if unlocated:
            r = unlocated[0]
            self.report.error(
                info, f"{ref}: {r['cls']} finding without coordinates; image left out", r["line"]
            )
            return None
        try:
            pixels = read_pgm(path)
        except ValueError as e:
            self.report.error(path, f"bad image file: {e}; image left out")
            return None
        h, w = pixels.shape
        if (h, w) != MINI_MIAS_SIZE:
            self.report.error(
                path, f"size {w}x{h}; Info.txt coordinates refer to 1024x1024 mini-MIAS"
            )
            return None

        number = int(_REFNUM.fullmatch(ref).group(1))
        severities = {r["severity"] for r in rows if r["severity"]}
        image = {
            "file_name": f"images/mias_{ref}.png",
            "source_file": str(path.resolve()),
            "stem": f"mias_{ref}",
            "height": h,
            "width": w,
            "patient_id": f"mias_{(number + 1) // 2:03d}",
            "laterality": "L" if number % 2 == 0 else "R",
            "view": "MLO",
            "pixel_spacing": list(PIXEL_SPACING_MM),
            "density": None,
            "tissue": rows[0]["tissue"],
            "pathology": "MALIGNANT" if "M" in severities else "BENIGN" if severities else None,
        }
        calc = CalcMask((h, w))
        masses, usable = [], True
        for r in rows:
            if r["cls"] == "NORM":
                continue
            if r["cls"] in OTHER_CLASSES:
                self.report.note(info, f"{ref}: {OTHER_CLASSES[r['cls']]} not converted", r["line"])
                continue
            x, row, radius = r["x"], (h - 1) - r["y"], r["radius"]  # origin bottom-left
            if not (0 <= x < w and 0 <= row < h):
                why = f"centre ({r['x']:g}, {r['y']:g}) outside the {w}x{h} image"
            elif not 0 < radius <= max(h, w):
                why = f"radius {radius:g} not positive or larger than the image"
            else:
                why = None
            if why:
                self.report.error(info, f"{ref}: {r['cls']} {why}; image left out", r["line"])
                usable = False
                continue
            if r["cls"] == "CALC":
                calc.add_circle((x, row), radius, calc_type="large")
                continue
            box = clip_bbox([x - radius, row - radius, 2 * radius, 2 * radius], (h, w))
            masses.append(
                {
                    "bbox": box,
                    "area": box[2] * box[3],
                    "shape": MASS_CLASSES[r["cls"]],
                    "pathology": SEVERITY.get(r["severity"]),
                    "center": [x, row],
                    "radius": radius,
                }
            )
        if not usable:
            return None
        atomic_write_png(self.out / image["file_name"], pixels)  # lossless, the source's bit depth
        return ConvertedImage(image, masses, calc)


convert = MiasConverter.convert  # convert(root, out, seed=0, hash_files=True, ...) -> summary
main = MiasConverter.main  # python -m datasets.mias --root RAW --out OUT [...]


if __name__ == "__main__":
    raise SystemExit(main())
