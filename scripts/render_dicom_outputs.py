r"""Read a prediction's DICOM SEG and SR back the way another DICOM program would, with highdicom
and pydicom alone (no DeepLIMa JSON), and draw what they hold on the source mammogram.

    python scripts/render_dicom_outputs.py SOURCE.dcm [--seg X_seg.dcm] [--sr X_sr.dcm] \
        --out overlay.png [--max-side 1024]

The SEG (``hd.seg.segread``) must reference the source's SOP Instance; its segments, on that
image, are united into one mask (a FRACTIONAL SEG counts the pixels >= 0.5). From the SR
(``hd.sr.srread``, a TID 1500 Measurement Report) every planar ROI group whose region is drawn on
the source SOP Instance is taken: its polyline, its bounding box, the "Certainty of Finding" score
and the finding type. Other images' regions are counted and left out.

Drawn with :func:`deeplima.overlay.draw_findings` (calcification outlines in cyan, mass boxes in
orange, scores printed) on the 8-bit image of :func:`common.preprocess.preprocess`, plus a light
fill of the mask and the calcification regions' polylines. Prints one line: what was read and where
the picture went. Errors are one line ``error: <file>: <reason>`` with exit status 1 (2 for usage).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from common.cli import OneLineArgumentParser, number_arg
from common.dicom import read_dicom_header
from common.errors import InputError
from common.io import atomic_write_png, os_error_reason
from common.preprocess import preprocess
from deeplima.overlay import CALC_COLOR, MASS_COLOR, draw_findings, line_width, thumbnail

__all__ = ["draw_dicom_findings", "main", "read_dicom_findings"]

MASS_CODE = (codes.SCT.Mass.value, codes.SCT.Mass.scheme_designator)
# the model's score: (DCM 111012, "Certainty of Finding")
CERTAINTY = codes.DCM.CertaintyOfFinding
CERTAINTY_CODE = (CERTAINTY.value, CERTAINTY.scheme_designator)
FILL_ALPHA = 0.35


# ------------------------------------------------------------------------------------ reading
def _read(reader, path: str | Path, what: str):
    try:
        return reader(str(path))
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            InvalidDicomError) as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise InputError(path, f"not a readable DICOM {what} ({reason})") from None


def _read_seg(path: str | Path, uid: str, shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """(bool mask on the source image, segment labels) of the SEG at ``path``."""
    seg = _read(hd.seg.segread, path, "Segmentation")
    refs = [sop for _study, _series, sop in seg.get_source_image_uids()]
    if uid not in refs:
        shown = ", ".join(refs[:3]) + (" ..." if len(refs) > 3 else "") if refs else "no image"
        raise InputError(path, f"the SEG references {shown}, not the source SOP Instance {uid}")
    numbers = list(seg.segment_numbers)
    labels = [seg.get_segment_description(n).SegmentLabel for n in numbers]
    if not numbers:
        return np.zeros(shape, bool), labels
    try:
        pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=numbers)
    except (ValueError, RuntimeError, KeyError) as e:
        reason = " ".join(str(e).split())[:300]
        raise InputError(path, f"cannot read the segments on the source image ({reason})"
                         ) from None
    planes = pixels[0]  # (rows, columns, segments)
    if planes.shape[:2] != shape:
        raise InputError(path, f"the SEG is {planes.shape[0]} x {planes.shape[1]} pixels, the "
                               f"source {shape[0]} x {shape[1]}")
    if np.issubdtype(planes.dtype, np.floating):  # FRACTIONAL, scaled to [0, 1]
        mask = (planes >= 0.5).any(axis=-1)
    else:
        mask = (planes > 0).any(axis=-1)
    return mask, labels


def _code(concept) -> tuple[str, str]:
    return (str(concept.value), str(concept.scheme_designator)) if concept is not None else ("", "")


def _score(group) -> float | None:
    for m in group.get_measurements():
        if _code(m.name) == CERTAINTY_CODE:
            return float(m.value)
    return None


def _read_sr(path: str | Path, uid: str) -> tuple[list[dict], int]:
    """(regions of the SR on the source image, number of regions on other images)."""
    sr = _read(hd.sr.srread, path, "Structured Report")
    evidence = {r.ReferencedSOPInstanceUID
                for key in ("CurrentRequestedProcedureEvidenceSequence",
                            "PertinentOtherEvidenceSequence")
                for study in sr.get(key, ())
                for series in study.get("ReferencedSeriesSequence", ())
                for r in series.get("ReferencedSOPSequence", ())}
    if uid not in evidence:
        raise InputError(path, f"the SR does not list the source SOP Instance {uid} among its "
                               f"evidence")
    report = sr.content
    if not hasattr(report, "get_planar_roi_measurement_groups"):
        raise InputError(path, "the SR content is not a TID 1500 Measurement Report")
    findings: list[dict] = []
    elsewhere = 0
    for group in report.get_planar_roi_measurement_groups():
        roi = group.roi
        if roi is None or roi.graphic_type != hd.sr.GraphicTypeValues.POLYLINE:
            continue  # a segment or volume reference, or another shape: not drawn as a region
        images = [item for item in roi.get("ContentSequence", ())
                  if isinstance(item, hd.sr.ImageContentItem)]
        if not images or images[0].referenced_sop_instance_uid != uid:
            elsewhere += 1
            continue
        points = np.asarray(roi.value, np.float64).reshape(-1, 2)  # (column, row)
        low, high = points.min(axis=0), points.max(axis=0)
        finding_type = group.finding_type
        findings.append({
            "kind": "mass" if _code(finding_type) == MASS_CODE else "calcification",
            "finding_type": finding_type.meaning if finding_type is not None else None,
            "tracking_id": group.tracking_identifier,
            "polyline": points,
            "bbox": [float(low[0]), float(low[1]), float(high[0] - low[0]),
                     float(high[1] - low[1])],
            "score": _score(group),
        })
    return findings, elsewhere


def read_dicom_findings(source: str | Path, seg: str | Path | None = None,
                        sr: str | Path | None = None) -> dict:
    """What a DICOM SEG and SR say about one source image, read with highdicom only.

    Args:
        source: the source DICOM image (its header gives the SOP Instance UID and the size).
        seg: a Segmentation derived from it, or None.
        sr: a TID 1500 Structured Report with image regions on it, or None.

    Returns:
        ``{"sop_instance_uid", "shape": (H, W), "mask": bool (H, W) (all False without a SEG),
        "segments": [label, ...], "boxes": [(x, y, w, h, score), ...] (SR order; score None when the
        group has none), "findings": [{"kind": "mass" | "calcification", "finding_type",
        "tracking_id", "polyline" (N, 2) (column, row), "bbox", "score"}, ...],
        "other_regions": regions on other images (left out)}``.

    Raises:
        InputError: a file is unreadable or does not refer to ``source`` (one line naming it).
    """
    header = read_dicom_header(source)
    uid = str(header.get("SOPInstanceUID") or "")
    if not uid:
        raise InputError(source, "the source image has no SOP Instance UID")
    shape = (int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0))
    mask, segments = (_read_seg(seg, uid, shape) if seg is not None
                      else (np.zeros(shape, bool), []))
    findings, elsewhere = _read_sr(sr, uid) if sr is not None else ([], 0)
    boxes = [(*f["bbox"], f["score"]) for f in findings]
    return {"sop_instance_uid": uid, "shape": shape, "mask": mask, "segments": segments,
            "boxes": boxes, "findings": findings, "other_regions": elsewhere}


# ------------------------------------------------------------------------------------ drawing
def draw_dicom_findings(gray: np.ndarray, read: dict) -> np.ndarray:
    """(H, W, 3) uint8 RGB: ``gray`` with the mask (fill and outline) and the SR regions."""
    masses = [{"bbox": f["bbox"], "score": f["score"]} for f in read["findings"]
              if f["kind"] == "mass" and f["score"] is not None]
    unscored = [f for f in read["findings"] if f["kind"] == "mass" and f["score"] is None]
    calcs = [f for f in read["findings"] if f["kind"] == "calcification"]
    rgb = draw_findings(gray, masses, read["mask"],
                        [{"bbox": f["bbox"], "score": f["score"]} for f in calcs
                         if f["score"] is not None])
    mask = read["mask"]
    if mask.any():
        tint = rgb[mask].astype(np.float32) * (1 - FILL_ALPHA)
        rgb[mask] = (tint + np.float32(FILL_ALPHA) * np.array(CALC_COLOR, np.float32)
                     ).round().astype(np.uint8)
    lw = line_width(gray.shape)
    for f in calcs + unscored:
        color = CALC_COLOR if f["kind"] == "calcification" else MASS_COLOR
        line = np.round(f["polyline"]).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(rgb, [line], False, color, lw, cv2.LINE_AA)
    return rgb


def _summary(source: str | Path, read: dict, out: str | Path) -> str:
    kinds = [f["kind"] for f in read["findings"]]
    segs = (f"{len(read['segments'])} segment(s) ({', '.join(read['segments'])})"
            if read["segments"] else "no segment")
    other = f", {read['other_regions']} region(s) on other images skipped" \
        if read["other_regions"] else ""
    return (f"{Path(source).name}: SEG {segs}, {int(read['mask'].sum())} pixel(s); "
            f"SR {len(kinds)} box(es) ({kinds.count('mass')} mass, "
            f"{kinds.count('calcification')} calcification){other} -> {out}")


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog="render_dicom_outputs.py",
        description="Draw the findings of a DICOM SEG and SR (read with highdicom) on their "
                    "source mammogram.")
    p.add_argument("source", help="the source DICOM image")
    p.add_argument("--seg", help="DICOM Segmentation of the source (X_seg.dcm)")
    p.add_argument("--sr", help="DICOM Structured Report with regions on the source (X_sr.dcm)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--max-side", type=number_arg(16, integer=True), default=1024,
                   help="longest side of the picture in pixels; a smaller image is kept as is "
                        "(default 1024)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seg is None and args.sr is None:
        build_parser().error("give --seg, --sr or both")
    try:
        read = read_dicom_findings(args.source, args.seg, args.sr)
        image = preprocess(args.source).image
        if image.shape != read["shape"]:
            raise InputError(args.source, f"decoded {image.shape[0]} x {image.shape[1]} pixels "
                                          f"but the header says {read['shape'][0]} x "
                                          f"{read['shape'][1]}")
        picture = thumbnail(draw_dicom_findings(image, read), args.max_side)
        try:
            atomic_write_png(args.out, picture)
        except OSError as e:
            raise InputError(args.out, f"cannot write the picture ({os_error_reason(e)})"
                             ) from None
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(args.source, read, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
