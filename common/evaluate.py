"""Lesion-level evaluation: the Python API and the command line of DeepLIMa's metrics.

Boxes (mass detection)::

    python -m common.evaluate boxes --gt GT.json --pred PRED.json [--hit iou|center|iop] [--iou 0.5]
        [--fps 1,2,5,10] [--bootstrap N --seed S] --out REPORT.json [--plot FROC.png]

Masks (calcification segmentation, the paper's IoP rule)::

    python -m common.evaluate masks (--gt-dir GT/ | --gt-json calcifications.json [--split test])
        --pred-dir PRED/ [--types TYPES.json] [--iop 0.25] [--binarize 0.5] [--fps 1,2,5,10]
        [--gt-labels processed|raw] [--min-area-mm2 6.5] [--min-area-px 900]
        [--pixel-spacing MM] [--missing-as-empty] [--bootstrap N --seed S] --out REPORT.json
        [--plot FROC.png]

Every evaluator of the project calls :func:`evaluate_boxes` / :func:`evaluate_masks` (also importable from
``common.metrics``); the definitions live in :mod:`common.metrics.matching`, :mod:`common.metrics.froc` and
:mod:`common.metrics.ap`.

Masks: the ground truth is by default the paper's processed labels (§4.2.1), the same definition the
U-Net trains on (:mod:`common.calcifications`): GT components smaller than 6.5 mm² (the paper's 900 px
at ~85 µm; the image's pixel spacing converts it, 900 px when unknown) are grown to that area before
the IoP rule; ``--gt-labels raw`` scores against the masks as annotated. A GT image without prediction file is an error unless ``--missing-as-empty`` (then it counts as
an image without any prediction, with a warning); a prediction file without GT image is an error, except
with ``--gt-json ... --split S`` where predictions of the other splits may share the folder and are
skipped. With ``--gt-json`` images whose ``mask_file`` is null are lesion-free images of the evaluation.
FP per cm^2 divides by the full image area (``--pixel-spacing`` or the canonical images' spacing).

Probability PNGs are read as value / 255 (8-bit) or value / 65535 (16-bit). A PNG holding only the
values 0 and 1 (8 or 16 bit) or 0 and 255 (16 bit) is most likely a binary mask saved without scaling
(it reads as p <= 0.004, below any ``--binarize``): it is read as it is, with a warning on stderr.
Save masks as 0/255 (8-bit) or 0/65535 (16-bit), or probabilities as floats in ``.npy``.

Untrusted input is checked: JSON fields must have the right types (ids are integers or strings, not
booleans; a bbox is a list of 4 finite numbers, not a string; scores are numbers), two GT images
sharing a stem are an error naming both, threshold arguments must be finite and in range, images
larger than ``$DEEPLIMA_MAX_PIXELS`` (default 100 million pixel values, see :mod:`common.dicom`) are
refused from their header, and ``--out``/``--plot`` must be writable files (not folders).

Exit status: 0 on success; 2 on a usage, input or output error, with one line ``error: ...`` on stderr
(bad argument such as ``--iou nan`` or ``--bootstrap -5``; missing file, unknown image id, bad bbox,
NaN score, mismatched mask size, duplicate stem, ...; ``--out`` that is a folder, a file that cannot
be read or written: a folder given as a file, no permission, disk full); 1 on an unexpected failure
(a bug: traceback).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.calcifications import (
    CALC_TYPES,
    DEFAULT_MIN_AREA_MM2,
    DEFAULT_MIN_AREA_PX,
    min_area_pixels,
)
from common.cli import OneLineArgumentParser, number_arg, number_list_arg
from common.dicom import check_pixel_count, check_raster_size
from common.errors import InputError
from common.io import atomic_write_json, finite_or_none, read_json, read_png
from common.metrics.ap import (
    ap_coco_101,
    ap_voc_all_point,
    coco_match_image,
    mean_over_categories,
)
from common.metrics.bootstrap import bootstrap_froc
from common.metrics.froc import (
    curve_to_json,
    froc_from_pooled,
    pool_matches,
    recall_of,
    sensitivity_at_fp,
)
from common.metrics.matching import BOX_HIT_RULES, ImageMatch, match_image_boxes, match_image_masks

logger = logging.getLogger(__name__)

#: Calcification types of the paper's Table 4 (always reported when types are given).
DEFAULT_FPS = (1, 2, 5, 10)
#: probabilities this far outside [0, 1] (float rounding of blended sliding windows) are clipped, not refused
PROB_TOL = 1e-5


# ======================================================================================= validation
def _is_number(v: Any) -> bool:
    """A real number from JSON or numpy; ``True``/``False`` and strings are not numbers."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    """An image or category id: an integer or a string (``True`` is not the id 1)."""
    return isinstance(v, int | str | np.integer) and not isinstance(v, bool)


def _check_threshold(name: str, value: Any) -> float:
    """A threshold in (0, 1]; ValueError otherwise (NaN, inf, 0 and booleans included)."""
    if not _is_number(value) or not 0 < float(value) <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_run_args(fps, bootstrap, seed) -> list[float]:
    fps = list(fps)
    if not all(_is_number(v) and math.isfinite(float(v)) and v >= 0 for v in fps):
        raise ValueError(f"fps must be finite numbers >= 0, got {fps!r}")
    for name, v in (("bootstrap", bootstrap), ("seed", seed)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return fps


def _summary(pooled: dict, fps: Iterable[float]) -> dict:
    curve = froc_from_pooled(pooled)
    return {
        "recall": recall_of(pooled["lesion_scores"]),
        "sensitivity_at_fp": sensitivity_at_fp(curve, fps),
        "froc": curve_to_json(curve),
        "n_lesions": int(len(pooled["lesion_scores"])),
        "_curve": curve,
    }


# ============================================================================================ boxes
def _load_gt_coco(gt_coco: dict | str | Path) -> tuple[dict, str]:
    if isinstance(gt_coco, str | Path):
        src = str(gt_coco)
        gt = read_json(gt_coco)
    else:
        src, gt = "ground truth", gt_coco
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise InputError(src, "not a COCO dataset (no 'images' list)")
    return gt, src


def _check_box(src: str, what: str, bbox) -> list[float]:
    if not isinstance(bbox, list | tuple | np.ndarray) or not all(_is_number(v) for v in bbox):
        raise InputError(src, f"{what}: bad bbox {bbox!r} (need a list of 4 numbers [x, y, w, h])")
    b = [float(v) for v in bbox]
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] < 0 or b[3] < 0:
        raise InputError(
            src, f"{what}: bad bbox {bbox!r} (need finite [x, y, w, h] with w, h >= 0)"
        )
    return b


def _index_boxes(gt: dict, src: str, predictions, pred_src: str):
    """Validate GT and predictions; group them by image (GT in annotation order, predictions in list
    order)."""
    image_ids = []
    for i, im in enumerate(gt["images"]):
        if not isinstance(im, Mapping) or "id" not in im:
            raise InputError(src, f"images[{i}] has no 'id'")
        if not _is_id(im["id"]):
            raise InputError(src, f"images[{i}]: id {im['id']!r} is not an integer or a string")
        image_ids.append(im["id"])
    if len(set(image_ids)) != len(image_ids):
        raise InputError(src, "duplicate image ids")
    known = set(image_ids)
    categories = gt.get("categories", [])
    annotations = gt.get("annotations", [])
    for key, value in (("categories", categories), ("annotations", annotations)):
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise InputError(src, f"'{key}' must be a list of objects")
    cats = []
    for i, c in enumerate(categories):
        if not _is_id(c.get("id")):
            raise InputError(src, f"categories[{i}]: id {c.get('id')!r} is not an integer or a string")
        cats.append(c["id"])
    gt_by_img: dict = defaultdict(list)
    for i, a in enumerate(annotations):
        what = f"annotations[{i}]"
        if not _is_id(a.get("image_id")) or a.get("image_id") not in known:
            raise InputError(src, f"{what}: unknown image_id {a.get('image_id')!r}")
        b = _check_box(src, what, a.get("bbox"))
        cat = a.get("category_id", cats[0] if len(cats) == 1 else None)
        if cat is not None and not _is_id(cat):
            raise InputError(src, f"{what}: category_id {cat!r} is not an integer or a string")
        if cat not in cats:
            cats.append(cat)  # a GT category missing from 'categories' still has to be evaluated
        area = a.get("area")
        if area is not None and (not _is_number(area) or not math.isfinite(area) or area < 0):
            raise InputError(src, f"{what}: area {area!r} is not a finite number >= 0")
        area = float(area) if area is not None else b[2] * b[3]
        crowd = a.get("iscrowd", 0)
        if not isinstance(crowd, int | np.integer) or crowd not in (0, 1):
            raise InputError(src, f"{what}: iscrowd {crowd!r} is not 0 or 1")
        gt_by_img[a["image_id"]].append((b, bool(crowd), area, cat))

    if isinstance(predictions, str | Path):
        pred_src = str(predictions)
        predictions = read_json(predictions)
    if not isinstance(predictions, list):
        raise InputError(pred_src, "predictions must be a list of COCO results")
    pr_by_img: dict = defaultdict(list)
    for i, p in enumerate(predictions):
        if not isinstance(p, Mapping):
            raise InputError(pred_src, f"[{i}] is not an object")
        if not _is_id(p.get("image_id")) or p.get("image_id") not in known:
            raise InputError(pred_src, f"[{i}]: unknown image_id {p.get('image_id')!r}")
        b = _check_box(pred_src, f"[{i}]", p.get("bbox"))
        if not _is_number(p.get("score")):
            raise InputError(pred_src, f"[{i}]: missing or non-numeric score {p.get('score')!r}")
        s = float(p["score"])
        if not math.isfinite(s):
            raise InputError(pred_src, f"[{i}]: score is {s}")
        cat = p.get("category_id", cats[0] if len(cats) == 1 else None)
        if cat is not None and not _is_id(cat):
            raise InputError(pred_src, f"[{i}]: category_id {cat!r} is not an integer or a string")
        if cat not in cats:
            raise InputError(pred_src, f"[{i}]: category_id {cat!r} not among GT categories {cats}")
        pr_by_img[p["image_id"]].append((b, s, cat))
    return image_ids, sorted(cats, key=str), gt_by_img, pr_by_img


def _boxes(items, k=0) -> np.ndarray:
    return np.asarray([it[k] for it in items], dtype=np.float64).reshape(-1, 4)


def evaluate_boxes(
    gt_coco: dict | str | Path,
    predictions: list[dict] | str | Path,
    hit: str = "iou",
    iou_thr: float = 0.5,
    fps: Iterable[float] = DEFAULT_FPS,
    bootstrap: int = 0,
    seed: int = 0,
    max_dets: int = 100,
) -> dict:
    """Evaluate predicted boxes against a COCO ground truth.

    Args:
        gt_coco: COCO dict or path. Every image in ``images`` is evaluated (lesion-free ones count in FP per
            image). Boxes ``bbox`` XYWH in original image pixels. ``iscrowd`` regions are not lesions; a
            prediction hitting only them is ignored.
        predictions: COCO results list (or path): ``image_id``, ``bbox`` XYWH, ``score``, ``category_id``
            (optional when the GT has one category).
        hit: FROC / recall hit rule: ``"iou"`` (IoU >= iou_thr), ``"center"`` (box centre inside the GT box)
            or ``"iop"`` (intersection over predicted area >= iou_thr).
        iou_thr: threshold of the hit rule. AP is always at IoU 0.5.
        fps: FP-per-image levels of ``sensitivity_at_fp``.
        bootstrap: number of bootstrap replicates (0 = none); images are resampled, or patients when every
            GT image has a ``patient_id``.
        max_dets: per-image, per-category cap of the COCO AP only (FROC and recall use every prediction).

    Returns:
        dict: ``ap50_coco`` (pycocotools AP at IoU .5, areaRng all, maxDets 100), ``ap50_voc`` (VOC2010+
        all-point AP, same greedy matching, no cap), ``recall`` (fraction of lesions hit at any score),
        ``sensitivity_at_fp`` {"1": ...}, ``froc`` {thresholds, fp_per_image, sensitivity, n_fp, n_found},
        counts and settings, and ``bootstrap`` when asked. FROC and recall are class-agnostic (a prediction
        may hit a GT box of any category); AP is averaged over the GT categories as COCO does. Undefined
        values (no lesion at all) are None.

    Raises:
        InputError: unknown image id, bad bbox, NaN score, unknown category, wrongly typed field
            (a bool id, a string bbox or score), unreadable file.
        ValueError: bad argument (unknown hit rule, ``iou_thr`` not in (0, 1], negative
            ``bootstrap``/``seed``, non-finite ``fps``).
    """
    if hit not in BOX_HIT_RULES:
        raise ValueError(f"unknown hit rule {hit!r}; choose from {sorted(BOX_HIT_RULES)}")
    iou_thr = _check_threshold("iou_thr", iou_thr)
    fps = _check_run_args(fps, bootstrap, seed)
    gt, src = _load_gt_coco(gt_coco)
    image_ids, cats, gt_by_img, pr_by_img = _index_boxes(gt, src, predictions, "predictions")

    matches = []
    for img in image_ids:
        g, p = gt_by_img.get(img, []), pr_by_img.get(img, [])
        matches.append(
            match_image_boxes(
                _boxes(p),
                [it[1] for it in p],
                _boxes(g),
                [it[1] for it in g],
                hit=hit,
                thr=iou_thr,
            )
        )
    pooled = pool_matches(matches)
    summ = _summary(pooled, fps)

    ap_coco, ap_voc = [], []
    for cat in cats:
        per_img_coco, per_img_voc = [], []
        for img in sorted(image_ids):
            g = [it for it in gt_by_img.get(img, []) if it[3] == cat]
            p = [it for it in pr_by_img.get(img, []) if it[2] == cat]
            args = (
                _boxes(p),
                [it[1] for it in p],
                _boxes(g),
                [it[1] for it in g],
                [it[2] for it in g],
            )
            per_img_coco.append(coco_match_image(*args, iou_thr=0.5, max_dets=max_dets))
            per_img_voc.append(coco_match_image(*args, iou_thr=0.5, max_dets=None))
        ap_coco.append(ap_coco_101(per_img_coco))
        ap_voc.append(ap_voc_all_point(per_img_voc))

    report = {
        "ap50_coco": mean_over_categories(ap_coco),
        "ap50_voc": mean_over_categories(ap_voc),
        "recall": summ["recall"],
        "sensitivity_at_fp": summ["sensitivity_at_fp"],
        "froc": summ["froc"],
        "n_images": len(image_ids),
        "n_lesions": summ["n_lesions"],
        "n_predictions": int(len(pooled["pred_scores"])),
        "hit": hit,
        "iou_thr": float(iou_thr),
    }
    if bootstrap:
        pids = [im.get("patient_id") for im in gt["images"]]
        groups = pids if all(p is not None for p in pids) else None
        report["bootstrap"] = bootstrap_froc(pooled, bootstrap, seed, fps, groups)
    return finite_or_none(report)


# ============================================================================================ masks
def _is_canonical(obj: Any) -> bool:
    return isinstance(obj, dict) and "images" in obj and "annotations" in obj


def _types_from_canonical(coco: dict, src: str) -> dict[str, list[dict]]:
    _check_canonical_stems(coco, src)
    stem_of = {im["id"]: im.get("stem") for im in coco["images"]}
    out: dict[str, list[dict]] = defaultdict(list)
    for i, a in enumerate(coco["annotations"]):
        if not isinstance(a, Mapping):
            raise InputError(src, f"annotations[{i}] is not an object")
        if a.get("calc_type") is not None and a.get("point") is not None:
            if not _is_id(a.get("image_id")) or a.get("image_id") not in stem_of:
                raise InputError(src, f"annotations[{i}]: unknown image_id {a.get('image_id')!r}")
            out[stem_of[a["image_id"]]].append({"type": a["calc_type"], "point": a["point"]})
    return dict(out)


def _check_canonical_stems(coco: dict, src: str, split: str | None = None) -> dict[str, dict]:
    """stem -> image record of a canonical dataset; InputError for a missing or shared stem."""
    if not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise InputError(src, "'images' and 'annotations' must be lists")
    return _stems_of(coco["images"], src, split)


def _stems_of(images: list, src: str, split: str | None = None,
              file_name_stems: bool = False) -> dict[str, dict]:
    """stem -> image record of the ``images`` of ``split`` (all when None); InputError for an image
    without a stem (``file_name_stems``: the stem of ``file_name`` stands in) or two sharing one."""
    by_stem: dict[str, dict] = {}
    for i, im in enumerate(images):
        if not isinstance(im, Mapping) or not _is_id(im.get("id")):
            raise InputError(src, f"images[{i}]: not an object with an integer or string 'id'")
        if split is not None and im.get("split") != split:
            continue
        stem = im.get("stem")
        file_name = im.get("file_name")
        if file_name_stems and not (isinstance(stem, str) and stem) and isinstance(file_name, str) \
                and file_name:
            stem = Path(file_name).stem
        if not isinstance(stem, str) or not stem:
            raise InputError(src, f"image {im.get('id')!r} has no 'stem' (or it is not a string)"
                             + (" nor a 'file_name'" if file_name_stems else ""))
        if stem in by_stem:
            first = by_stem[stem]

            def name(r):
                return f"image {r.get('id')!r} ({r.get('mask_file') or 'no mask_file'})"

            raise InputError(src, f"two images share the stem {stem!r}: {name(first)} and {name(im)}")
        by_stem[stem] = im
    return by_stem


def _check_types(types: Mapping, src: str) -> None:
    """Every entry must be ``{"type": str, "point": [x, y]}`` with finite coordinates."""
    for stem, points in types.items():
        if not isinstance(points, list | tuple):
            raise InputError(src, f"{stem}: expected a list of {{type, point}} records")
        for i, p in enumerate(points):
            pt = p.get("point") if isinstance(p, Mapping) else None
            ok = isinstance(p, Mapping) and isinstance(p.get("type"), str)
            ok = ok and isinstance(pt, list | tuple) and len(pt) == 2
            if ok:
                ok = all(_is_number(v) and math.isfinite(float(v)) for v in pt)
            if not ok:
                raise InputError(src, f"{stem}[{i}]: expected {{\"type\": str, \"point\": [x, y]}}, got {p!r}")


def _spacing_of(spacing, stem: str):
    """(row_mm, col_mm) or None from a float, a pair, or a dict stem -> pair."""
    if spacing is None:
        return None
    if isinstance(spacing, Mapping):
        return _spacing_of(spacing.get(stem), stem)
    if _is_number(spacing):
        pair = (float(spacing), float(spacing))
    elif (
        isinstance(spacing, list | tuple | np.ndarray)
        and len(spacing) == 2
        and all(_is_number(v) for v in spacing)
    ):
        pair = (float(spacing[0]), float(spacing[1]))
    else:
        raise InputError(stem, f"pixel spacing {spacing!r} is not a number or a [row_mm, col_mm] pair")
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise InputError(stem, f"pixel spacing {spacing!r} must be finite and > 0")
    return pair


def _source(mapping: Mapping, stem: str) -> str:
    """File name behind ``stem`` when the mapping reads files (:class:`LazyFiles`), else the stem."""
    return mapping.source(stem) if hasattr(mapping, "source") else stem


def _check_prob(stem: str, prob, shape, gt_src: str = "the GT mask") -> np.ndarray:
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise InputError(stem, f"probability map must be 2-D, got shape {prob.shape}")
    if prob.shape != tuple(shape):
        raise InputError(
            stem,
            f"probability map is {prob.shape[1]}x{prob.shape[0]} (WxH) but the GT "
            f"{gt_src} is {shape[1]}x{shape[0]} (WxH)",
        )
    if not np.issubdtype(prob.dtype, np.floating):
        raise InputError(stem, f"probability map must be float in [0, 1], got {prob.dtype}")
    if not np.isfinite(prob).all():
        raise InputError(stem, "probability map contains NaN or inf")
    if prob.size:
        lo, hi = float(prob.min()), float(prob.max())
        if lo < -PROB_TOL or hi > 1 + PROB_TOL:
            raise InputError(stem, f"probabilities outside [0, 1] (min {lo}, max {hi})")
        if lo < 0 or hi > 1:  # rounding of blended windows; harmless
            prob = np.clip(prob, 0, 1)
    return prob


def evaluate_masks(
    gt_masks: Mapping[str, np.ndarray],
    prob_maps: Mapping[str, np.ndarray],
    types: dict | str | Path | None = None,
    iop_thr: float = 0.25,
    binarize: float = 0.5,
    fps: Iterable[float] = DEFAULT_FPS,
    pixel_spacing=None,
    patient_ids: Mapping[str, str] | None = None,
    missing: str = "error",
    bootstrap: int = 0,
    seed: int = 0,
    min_area: int | Mapping[str, int] | None = None,
    min_area_mm2: float | None = None,
    min_area_px: int = DEFAULT_MIN_AREA_PX,
) -> dict:
    """Evaluate calcification probability maps with the paper's IoP rule.

    Args:
        gt_masks: stem -> (H, W) GT mask (non-zero = calcification). Every stem is one evaluated image,
            lesion-free ones included. May be a lazy mapping (values are read one at a time).
        prob_maps: stem -> (H, W) float probabilities in [0, 1], same pixel frame as the GT.
        types: stem -> list of ``{"type": "dot"|"vessel"|"large", "point": [x, y]}``, or a canonical
            ``calcifications.json`` (dict or path; images need ``stem``, annotations ``calc_type`` and
            ``point``). Each GT component takes the type of the first point inside it.
        iop_thr: IoP threshold of a true positive (paper: 0.25).
        binarize: probability threshold defining predicted components (kept fixed; the FROC then sweeps
            the component scores, i.e. their maximum probability).
        pixel_spacing: mm per pixel: a float, (row_mm, col_mm), or stem -> pair / None. When None and
            ``types`` is a canonical dataset, its images' ``pixel_spacing`` is used.
        patient_ids: stem -> patient id for the patient-level bootstrap (taken from a canonical ``types``
            when None).
        missing: what a GT stem without probability map means: ``"error"`` (InputError) or ``"empty"``
            (no prediction on that image, logged as a warning).
        min_area: the processed labels as ground truth (paper §4.2.1, :mod:`common.calcifications`):
            GT components smaller than this many pixels (one int, or stem -> int, e.g. from
            :func:`common.calcifications.min_area_pixels`) are grown to it before matching, as the
            U-Net's training target is. The lesions stay the annotated components. None = raw masks
            unless ``min_area_mm2`` is given.
        min_area_mm2, min_area_px: the processed labels with the minimum area converted per image from
            its ``pixel_spacing`` (as resolved above), ``min_area_px`` for images without one; used
            when ``min_area`` is None.

    Returns:
        dict: ``recall``, ``sensitivity_at_fp``, ``froc`` (see :mod:`common.metrics.froc`), counts,
        ``gt_labels`` ("processed" or "raw") with ``min_area_px`` [min, max] over the images, and when
        types are given ``per_type`` {type: {recall, sensitivity_at_fp, froc, n_lesions}} where, for type T,
        sensitivity = found T lesions / all T lesions while the FP axis stays the overall FP per image of
        all predictions (this is how the paper's Table 4 reads); ``n_untyped`` counts GT components without
        a type point (they count in the overall figures only). ``bootstrap`` (when asked) holds CIs of
        ``recall`` and ``sensitivity_at_fp``, overall and in ``per_type``. When every image has a pixel
        spacing: ``area_cm2`` (sum of the full image areas, not the breast areas: the metric has no
        breast mask), ``fp_per_cm2`` (false positives of all predictions / area_cm2) and
        ``froc.fp_per_cm2`` per threshold.

    Raises:
        InputError: size mismatch, NaN or out-of-range probability, missing or unknown prediction,
            wrongly typed field in ``types``, two canonical images sharing a stem.
        ValueError: bad argument (``iop_thr`` or ``binarize`` not in (0, 1], negative
            ``bootstrap``/``seed``, non-finite ``fps``).
    """
    if missing not in ("error", "empty"):
        raise ValueError("missing must be 'error' or 'empty'")
    iop_thr = _check_threshold("iop_thr", iop_thr)
    binarize = _check_threshold("binarize", binarize)
    fps = _check_run_args(fps, bootstrap, seed)
    canonical = None
    if isinstance(types, str | Path):
        types_src = str(types)
        types = read_json(types)
    else:
        types_src = "types"
    if _is_canonical(types):
        canonical = types
        types = _types_from_canonical(canonical, types_src)
    if types is not None and not isinstance(types, Mapping):
        raise InputError(
            types_src, "types must map stem -> list of {type, point} or be a COCO dataset"
        )
    if types is not None:
        _check_types(types, types_src)
    if canonical is not None:
        by_stem = _check_canonical_stems(canonical, types_src)
        if pixel_spacing is None:
            pixel_spacing = {s: im.get("pixel_spacing") for s, im in by_stem.items()}
        if patient_ids is None:
            patient_ids = {s: im.get("patient_id") for s, im in by_stem.items()}

    stems = list(gt_masks.keys())
    unknown = sorted(set(prob_maps.keys()) - set(stems))
    if unknown:
        raise InputError(
            _source(prob_maps, unknown[0]),
            f"prediction for an image without GT ({len(unknown)} such)",
        )

    matches: list[ImageMatch] = []
    areas_used: list[int] = []
    area_cm2 = 0.0
    spacing_known = True
    for stem in stems:
        gt = np.asarray(gt_masks[stem])
        if gt.ndim == 3:
            gt = gt.any(axis=2)
        if gt.ndim != 2:
            raise InputError(_source(gt_masks, stem), f"GT mask must be 2-D, got shape {gt.shape}")
        gt = gt != 0
        if stem in prob_maps:
            prob = _check_prob(
                _source(prob_maps, stem), prob_maps[stem], gt.shape, _source(gt_masks, stem)
            )
        elif missing == "empty":
            logger.warning(
                "%s: no probability map, evaluated as an image without predictions", stem
            )
            prob = np.zeros(gt.shape, np.float32)
        else:
            raise InputError(stem, "no probability map for this GT image")
        points = types.get(stem, []) if types is not None else None
        sp = _spacing_of(pixel_spacing, stem)
        area = min_area.get(stem) if isinstance(min_area, Mapping) else min_area
        if area is None and min_area_mm2 is not None:
            area = min_area_pixels(sp, min_area_mm2, min_area_px)
        if area is not None:
            areas_used.append(int(area))
        try:
            m = match_image_masks(gt, prob, iop_thr=iop_thr, binarize=binarize, type_points=points,
                                  min_area=area)
        except ValueError as e:
            where = f"{types_src} ({stem})" if "type point" in str(e) else _source(gt_masks, stem)
            raise InputError(where, str(e)) from None
        matches.append(m)
        if sp is None:
            spacing_known = False
        else:
            area_cm2 += gt.size * sp[0] * sp[1] / 100.0

    pooled = pool_matches(matches)
    summ = _summary(pooled, fps)
    report: dict[str, Any] = {
        "recall": summ["recall"],
        "sensitivity_at_fp": summ["sensitivity_at_fp"],
        "froc": summ["froc"],
        "n_images": len(stems),
        "n_lesions": summ["n_lesions"],
        "n_predictions": int(len(pooled["pred_scores"])),
        "n_true_positive_predictions": int(sum(int(m.pred_hit.sum()) for m in matches)),
        "iop_thr": float(iop_thr),
        "binarize": float(binarize),
        "gt_labels": "processed" if areas_used else "raw",
    }
    if areas_used:
        report["min_area_px"] = [min(areas_used), max(areas_used)]
    if types is not None:
        names = list(CALC_TYPES)
        for m in matches:
            for t in m.lesion_types:
                if t is not None and t not in names:
                    names.append(t)
        per_type = {}
        for t in names:
            s = _summary(pool_matches(matches, lesion_type=t), fps)
            s.pop("_curve")
            per_type[t] = s
        report["per_type"] = per_type
        report["n_untyped"] = int(sum(int(sum(t is None for t in m.lesion_types)) for m in matches))
    if spacing_known and stems and area_cm2 > 0:
        curve = summ["_curve"]
        report["area_cm2"] = area_cm2
        report["fp_per_cm2"] = float(pooled["pred_fp"].sum() / area_cm2)
        report["froc"]["fp_per_cm2"] = [float(v) / area_cm2 for v in curve["n_fp"]]
    if bootstrap:
        groups = None
        if patient_ids is not None:
            pids = [patient_ids.get(s) for s in stems]
            groups = pids if all(p is not None for p in pids) else None
        report["bootstrap"] = bootstrap_froc(pooled, bootstrap, seed, fps, groups)
        if types is not None:
            # same seed -> the same resampled images for every type
            report["bootstrap"]["per_type"] = {
                t: {
                    k: v
                    for k, v in bootstrap_froc(
                        pool_matches(matches, lesion_type=t), bootstrap, seed, fps, groups
                    ).items()
                    if k in ("recall", "sensitivity_at_fp")
                }
                for t in report["per_type"]
            }
    return finite_or_none(report)


# ============================================================================================ files
class LazyFiles(Mapping):
    """Read-on-access mapping stem -> array (keeps one image in memory at a time)."""

    def __init__(self, files: dict[str, Any], reader, name=None):
        self._files = files
        self._reader = reader
        self._name = name or str

    def source(self, stem: str) -> str:
        """The file behind ``stem`` (for error messages)."""
        return self._name(self._files[stem])

    def __getitem__(self, stem: str) -> np.ndarray:
        return self._reader(self._files[stem])

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def read_gt_mask(path: str | Path) -> np.ndarray:
    """GT mask PNG -> (H, W) bool, non-zero = lesion (any channel of a colour PNG).

    A PNG whose header declares more than ``$DEEPLIMA_MAX_PIXELS`` pixel values is refused before
    decoding (:func:`common.dicom.check_raster_size`).
    """
    if Path(path).is_file():
        check_raster_size(path)
    a = read_png(path)
    return (a != 0).any(axis=2) if a.ndim == 3 else a != 0


#: (dtype, top value) of PNGs that look like unscaled binary masks rather than probability maps
_MASK_LIKE = {np.dtype(np.uint8): (1,), np.dtype(np.uint16): (1, 255)}


def _warn_if_binary(path: Path, a: np.ndarray) -> None:
    """Warn about a PNG holding only {0, m} with m = 1 (8/16-bit) or 255 (16-bit): an unscaled mask."""
    tops = _MASK_LIKE.get(a.dtype, ())
    if not a.size or not tops:
        return
    top = int(a.max())
    if top in tops and not np.any((a != 0) & (a != top)):
        full = np.iinfo(a.dtype).max
        logger.warning(
            "%s: looks like a binary mask, not a probability map: a %d-bit PNG with only the values "
            "0 and %d, read as p = %d/%d = %.4g; save masks as 0/%d or probabilities as .npy floats",
            path, a.dtype.itemsize * 8, top, top, full, top / full, full,
        )


def read_prob_map(path: str | Path) -> np.ndarray:
    """Probability map -> (H, W) float32 in [0, 1].

    ``.npy``: float array as is; 16-bit PNG: value / 65535; 8-bit PNG: value / 255. A PNG with only
    the values {0, 1} (8 or 16 bit) or {0, 255} (16 bit) is read the same way, with a warning that it
    looks like an unscaled binary mask. Images larger than ``$DEEPLIMA_MAX_PIXELS`` pixel values are
    refused from their header.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False, mmap_mode="r")  # header only, no allocation yet
        except (OSError, ValueError) as e:
            raise InputError(path, f"unreadable .npy ({e})") from None
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(path, f".npy probability map must be float, got {a.dtype}")
        check_pixel_count(path, int(a.size), "x".join(str(v) for v in a.shape) + " values")
        a = np.array(a)
    else:
        if path.is_file():
            check_raster_size(path)
        a = read_png(path)
        if a.ndim != 2:
            raise InputError(path, f"probability PNG must be single-channel, got shape {a.shape}")
        if a.dtype not in (np.uint8, np.uint16):
            raise InputError(path, f"unsupported PNG dtype {a.dtype}")
        _warn_if_binary(path, a)
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    if a.ndim != 2:
        raise InputError(path, f"probability map must be 2-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(path, "probability map contains NaN or inf")
    return a


def _pred_files(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    files: dict[str, Path] = {}
    for p in sorted(pred_dir.iterdir()):
        if p.suffix.lower() not in (".png", ".npy"):
            continue
        if p.stem in files:
            raise InputError(p, f"two prediction files for stem {p.stem!r} ({files[p.stem].name})")
        files[p.stem] = p
    return files


def _gt_from_dir(gt_dir: Path):
    if not gt_dir.is_dir():
        raise InputError(gt_dir, "GT folder not found")
    files: dict[str, Path] = {}
    for p in sorted(gt_dir.iterdir()):
        if p.suffix.lower() != ".png" or p.name.startswith("."):
            continue
        if p.stem in files:
            raise InputError(
                gt_dir, f"two GT masks share the stem {p.stem!r}: {files[p.stem].name} and {p.name}"
            )
        files[p.stem] = p
    if not files:
        raise InputError(gt_dir, "no GT mask PNG in folder")
    return LazyFiles(files, read_gt_mask)


def _gt_from_canonical(gt_json: Path, split: str | None):
    coco = read_json(gt_json)
    if not _is_canonical(coco):
        raise InputError(gt_json, "not a COCO dataset")
    root = gt_json.parent
    entries: dict[str, Any] = {}
    for stem, im in _check_canonical_stems(coco, str(gt_json), split).items():
        mf = im.get("mask_file")
        if mf is not None and (not isinstance(mf, str) or not mf):
            raise InputError(gt_json, f"image {im.get('id')!r}: mask_file {mf!r} is not a file name")
        h, w = im.get("height"), im.get("width")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
            raise InputError(
                gt_json, f"image {im.get('id')!r}: height/width {h!r}/{w!r} are not positive integers"
            )
        check_pixel_count(f"{gt_json}: image {im.get('id')!r}", h * w, f"{w} x {h} pixels")
        entries[stem] = (Path(mf) if mf and Path(mf).is_absolute() else root / mf if mf else None, im)
    if not entries:
        raise InputError(gt_json, f"no image{'' if split is None else f' in split {split!r}'}")

    def read(entry):
        path, im = entry
        if path is None:
            return np.zeros((int(im["height"]), int(im["width"])), bool)
        m = read_gt_mask(path)
        if m.shape != (int(im["height"]), int(im["width"])):
            raise InputError(
                path,
                f"mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image record says "
                f"{im['width']}x{im['height']}",
            )
        return m

    return LazyFiles(
        entries, read, name=lambda e: str(e[0] or f"{gt_json}: image {e[1].get('id')}")
    ), coco


# argument types of the command line (usage errors, exit status 2)
_parse_fps = number_list_arg(0)
_threshold_arg = number_arg(0, 1, low_open=True)
_count_arg = number_arg(0, integer=True)
_positive_arg = number_arg(0, low_open=True)
_non_negative_arg = number_arg(0)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineArgumentParser(
        prog="python -m common.evaluate", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="mode", required=True)

    def common_args(p):
        p.add_argument("--fps", type=_parse_fps, default=list(DEFAULT_FPS), help="FP/image levels")
        p.add_argument("--out", required=True, type=Path,
                       help="REPORT.json (written atomically; not a folder)")
        p.add_argument("--plot", type=Path, help="FROC plot PNG (FP per image on a log axis)")
        p.add_argument("--bootstrap", type=_count_arg, default=0, metavar="N",
                       help="bootstrap replicates (>= 0)")
        p.add_argument("--seed", type=_count_arg, default=0, help="bootstrap seed (>= 0)")

    b = sub.add_parser("boxes", help="mass detection: COCO GT vs COCO results")
    b.add_argument("--gt", required=True, type=Path, help="COCO GT json")
    b.add_argument("--pred", required=True, type=Path, help="COCO results json")
    b.add_argument("--hit", choices=sorted(BOX_HIT_RULES), default="iou", help="FROC hit rule")
    b.add_argument("--iou", type=_threshold_arg, default=0.5,
                   help="threshold of the iou / iop hit rule, in (0, 1]")
    b.add_argument("--pred-images", type=Path,
                   help="the prediction folder's images.json ([{id, stem}]): prediction image ids are "
                        "mapped to the GT's by file stem (default: images.json beside --pred, as in a "
                        "deeplima prediction folder)")
    b.add_argument("--split", help="score only the GT images of this split (canonical masses.json); "
                                   "predictions of other images are dropped (needs the stem mapping)")
    common_args(b)

    m = sub.add_parser("masks", help="calcification segmentation: IoP rule on probability maps")
    g = m.add_mutually_exclusive_group(required=True)
    g.add_argument("--gt-dir", type=Path, help="GT mask PNGs (non-zero = lesion), one per image")
    g.add_argument("--gt-json", type=Path, help="canonical calcifications.json (all its images)")
    m.add_argument("--split", help="with --gt-json: evaluate only images of this split")
    m.add_argument(
        "--pred-dir", required=True, type=Path, help="<stem>.png (8/16-bit) or <stem>.npy"
    )
    m.add_argument(
        "--types", type=Path, help="stem -> [{type, point}] json, or calcifications.json"
    )
    m.add_argument("--iop", type=_threshold_arg, default=0.25,
                   help="IoP threshold of a true positive, in (0, 1]")
    m.add_argument(
        "--binarize", type=_threshold_arg, default=0.5,
        help="probability threshold of components (prob >= binarize), in (0, 1]",
    )
    m.add_argument(
        "--gt-labels",
        choices=["processed", "raw"],
        default="processed",
        help="ground truth of the IoP rule. processed (default): the paper's processed labels, the "
        "U-Net's training target: every GT component smaller than --min-area-mm2 (converted with the "
        "image's pixel spacing; --min-area-px when the spacing is unknown) is grown to that area "
        "without merging neighbours. raw: the masks as annotated (a blob predicted over a 1-3 px dot "
        "then has IoP far below 0.25)",
    )
    m.add_argument(
        "--min-area-mm2",
        type=_non_negative_arg,
        default=DEFAULT_MIN_AREA_MM2,
        help="minimum component area of the processed labels in mm^2 (default %(default)s: the "
        "paper's 900 px at ~85 um pixels); 0 = always --min-area-px",
    )
    m.add_argument(
        "--min-area-px",
        type=_count_arg,
        default=DEFAULT_MIN_AREA_PX,
        help="minimum area in pixels for images without a known pixel spacing (default %(default)s)",
    )
    m.add_argument("--pixel-spacing", type=_positive_arg, help="mm per pixel (isotropic), for FP per cm^2 "
                   "and the processed labels' minimum area")
    m.add_argument(
        "--missing-as-empty",
        action="store_true",
        help="a GT image without prediction file counts as having no prediction (warning); "
        "default: error",
    )
    common_args(m)
    return ap


def _check_output(path: Path, flag: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse an output path that cannot be a file we write, before any work is done."""
    if path.is_dir():
        raise InputError(path, f"{flag} is an existing folder; give a file name such as "
                               f"{path / ('REPORT.json' if flag == '--out' else 'froc.png')}")
    for other in inputs:
        if other is not None and other.exists() and path.exists() and os.path.samefile(path, other):
            raise InputError(path, f"{flag} would overwrite an input file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, f"{flag}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(path, f"{flag}: no permission to write in {parent}")


def _boxes_inputs(gt_path: Path, pred_path: Path, images_path: Path | None, split: str | None):
    """GT and predictions of ``boxes``, with prediction image ids mapped to the GT's by stem when the
    predictions come with an ``images.json`` (a deeplima prediction folder numbers its images 1..N,
    which would otherwise silently meet unrelated GT images), and the GT cut to ``split``."""
    if images_path is None and (pred_path.parent / "images.json").is_file():
        images_path = pred_path.parent / "images.json"
    if images_path is None and split is None:
        return gt_path, pred_path  # plain COCO results: ids are the GT's own
    gt, src = _load_gt_coco(gt_path)
    predictions = read_json(pred_path)
    if images_path is None:
        raise InputError(pred_path, "--split needs the predictions' images.json (--pred-images) "
                                    "to tell which predictions belong to the split")
    by_stem = _stems_of(gt["images"], src, split, file_name_stems=True)
    if split is not None:
        if not by_stem:
            raise InputError(src, f"no image of split {split!r}")
        keep = {im["id"] for im in by_stem.values()}
        gt = {**gt, "images": list(by_stem.values()),
              "annotations": [a for a in gt.get("annotations", []) if isinstance(a, dict)
                              and a.get("image_id") in keep]}
    entries = read_json(images_path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(images_path, "not an images.json list of {id, stem} objects")
    stem_of = {e.get("id"): e.get("stem") for e in entries}
    if not isinstance(predictions, list):
        raise InputError(pred_path, "not a COCO results list")
    mapped = []
    for p in predictions:
        pid = p.get("image_id") if isinstance(p, dict) else None
        if pid not in stem_of:
            raise InputError(pred_path, f"prediction image_id {pid!r} is not in {images_path}")
        stem = stem_of[pid]
        if stem not in by_stem:
            if split is not None:
                continue  # an image of another split
            raise InputError(pred_path, f"prediction for {stem!r} ({images_path}), an image the GT "
                                        "does not hold (--split to score one split of a shared folder)")
        mapped.append({**p, "image_id": by_stem[stem]["id"]})
    return gt, mapped


def _write_error(path: Path, what: str, e: OSError) -> InputError:
    reason = e.strerror or str(e) or type(e).__name__
    return InputError(path, f"cannot write the {what} ({reason})")


def _run(args) -> dict:
    inputs = [getattr(args, k, None) for k in ("gt", "pred", "gt_json", "types")]
    _check_output(args.out, "--out", inputs)
    if args.plot is not None:
        _check_output(args.plot, "--plot", inputs)
        if args.plot.resolve() == args.out.resolve():
            raise InputError(args.plot, "--plot and --out are the same file")
    if args.mode == "boxes":
        gt, predictions = _boxes_inputs(args.gt, args.pred, args.pred_images, args.split)
        report = evaluate_boxes(
            gt,
            predictions,
            hit=args.hit,
            iou_thr=args.iou,
            fps=args.fps,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        curves = {"all": report["froc"]}
    else:
        if args.gt_dir is not None:
            gt = _gt_from_dir(args.gt_dir)
            types = args.types
        else:
            gt, coco = _gt_from_canonical(args.gt_json, args.split)
            types = args.types if args.types is not None else coco
        pred_files = {s: p for s, p in _pred_files(args.pred_dir).items()}
        unknown = sorted(set(pred_files) - set(gt))
        if unknown and args.gt_json is not None and args.split is not None:
            # predictions of other splits are expected in a shared folder
            pred_files = {s: p for s, p in pred_files.items() if s in gt}
        elif unknown:
            raise InputError(pred_files[unknown[0]], "prediction for an image without GT mask")
        missing = sorted(set(gt) - set(pred_files))
        if missing and not args.missing_as_empty:
            raise InputError(
                args.pred_dir / f"{missing[0]}.png",
                f"no prediction (.png or .npy) for GT image {missing[0]!r} "
                f"({len(missing)} missing; --missing-as-empty to accept)",
            )
        report = evaluate_masks(
            gt,
            LazyFiles(pred_files, read_prob_map),
            types=types,
            min_area_mm2=args.min_area_mm2 if args.gt_labels == "processed" else None,
            min_area_px=args.min_area_px,
            iop_thr=args.iop,
            binarize=args.binarize,
            fps=args.fps,
            pixel_spacing=args.pixel_spacing,
            missing="empty" if args.missing_as_empty else "error",
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        curves = {"all": report["froc"]}
        for t, s in report.get("per_type", {}).items():
            if s["n_lesions"]:
                curves[t] = s["froc"]
    try:
        atomic_write_json(args.out, report)
    except OSError as e:
        raise _write_error(args.out, "report", e) from None
    if args.plot is not None:
        from common.plots import plot_froc

        try:
            plot_froc(curves, args.plot, title=f"FROC ({args.mode})", fps=args.fps)
        except OSError as e:
            raise _write_error(args.plot, "plot", e) from None
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage error (one line already printed, status 2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        report = _run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder that cannot be read or written (a folder given as --gt, ...)
        reason = e.strerror or str(e) or type(e).__name__
        where = f"{e.filename}: " if e.filename else ""
        print(" ".join(f"error: {where}{reason}".split()), file=sys.stderr)
        return 2
    sens = ", ".join(
        f"{k}: {v if v is None else round(v, 4)}" for k, v in report["sensitivity_at_fp"].items()
    )
    extra = f"ap50_coco {report['ap50_coco']}  " if "ap50_coco" in report else ""
    print(f"{extra}recall {report['recall']}  sensitivity@FP/image {{{sens}}}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
