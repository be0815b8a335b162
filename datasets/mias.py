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
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from common.errors import InputError
from datasets.canonical import (
    CalcMask,
    ConversionReport,
    check_root,
    clip_bbox,
    converter_main,
    finish_conversion,
    image_size,
)

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


def convert(
    root: str | Path, out: str | Path, seed: int = 0, hash_files: bool = True, verbose: bool = True
) -> dict:
    """Convert a mini-MIAS download at ``root`` into the canonical folder ``out``; returns a summary."""
    root, out = check_root(root), Path(out)
    report = ConversionReport("mias")
    info = _find_info(root)
    findings = parse_info(info, report)
    pgms = {p.stem.lower(): p for p in root.rglob("*") if p.suffix.lower() == ".pgm"}

    images, mass_anns, calc_anns = [], [], []
    for ref in tqdm(sorted(findings), desc="mias", disable=not verbose):
        rows = findings[ref]
        first = rows[0]["line"]
        if any(r["cls"] is None for r in rows):
            continue  # reported by parse_info
        path = pgms.get(ref)
        if path is None:
            report.error(info, f"{ref}: image file {ref}.pgm not found under {root}", first)
            continue
        try:
            h, w = image_size(path)
        except Exception as e:
            report.error(path, f"unreadable image ({e})")
            continue
        if (h, w) != MINI_MIAS_SIZE:
            report.error(path, f"size {w}x{h}; Info.txt coordinates refer to 1024x1024 mini-MIAS")
            continue
        unlocated = [r for r in rows if r["x"] is None and r["cls"] in {"CALC", *MASS_CLASSES}]
        if unlocated:
            r = unlocated[0]
            report.error(
                info, f"{ref}: {r['cls']} finding without coordinates; image left out", r["line"]
            )
            continue

        number = int(_REFNUM.fullmatch(ref).group(1))
        image_id = len(images) + 1
        severities = {r["severity"] for r in rows if r["severity"]}
        image = {
            "id": image_id,
            "file_name": str(path.resolve()),
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
        for r in rows:
            if r["cls"] == "NORM":
                continue
            if r["cls"] in OTHER_CLASSES:
                report.note(info, f"{ref}: {OTHER_CLASSES[r['cls']]} not converted", r["line"])
                continue
            x, row, radius = r["x"], (h - 1) - r["y"], r["radius"]  # origin bottom-left
            if not (0 <= x < w and 0 <= row < h) or radius <= 0:
                report.error(
                    info,
                    f"{ref}: centre ({r['x']:g}, {r['y']:g}) / radius outside image",
                    r["line"],
                )
                continue
            if r["cls"] == "CALC":
                calc.add_circle((x, row), radius, calc_type="large")
                continue
            box = clip_bbox([x - radius, row - radius, 2 * radius, 2 * radius], (h, w))
            mass_anns.append(
                {
                    "image_id": image_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "shape": MASS_CLASSES[r["cls"]],
                    "pathology": SEVERITY.get(r["severity"]),
                    "center": [x, row],
                    "radius": radius,
                }
            )
        calc_anns += calc.finish(out, image)
        images.append(image)

    return finish_conversion(
        out, root, "mini-MIAS", images, mass_anns, calc_anns, seed, report, hash_files, verbose
    )


def main(argv=None) -> int:
    return converter_main(convert, "Convert mini-MIAS into the canonical dataset form.", argv)


if __name__ == "__main__":
    raise SystemExit(main())
