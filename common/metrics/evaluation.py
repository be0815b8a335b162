"""Lesion-level evaluation of a data set: :func:`evaluate_boxes` and :func:`evaluate_masks`.

Both follow the three stages of :mod:`common.metrics`: per-image matching with a pluggable hit rule
(:mod:`common.metrics.matching`), the pure FROC curve over the pooled matches
(:mod:`common.metrics.froc`), then scalar scores (recall, sensitivity at k FP per image, AP50 from
:mod:`common.metrics.ap`) and optional bootstrap intervals (:mod:`common.metrics.bootstrap`). Every
evaluator of the project (the ``python -m common.evaluate`` command line, the Detectron2 evaluator
of ``mass_det``, the U-Net's validation, the HTML report) calls these two functions.

Input is untrusted: JSON fields, arguments and probability maps are checked
(:mod:`common.metrics.validation`); bad input raises :class:`common.errors.InputError`, a bad
argument :class:`ValueError`. Reports hold plain floats, with None for undefined values (no lesion
at all).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.calcifications import CALC_TYPES, DEFAULT_MIN_AREA_PX, min_area_pixels
from common.errors import InputError
from common.io import finite_or_none, read_json
from common.metrics.ap import ap_coco_101, ap_voc_all_point, coco_match_image, mean_over_categories
from common.metrics.bootstrap import bootstrap_froc
from common.metrics.froc import (
    DEFAULT_FPS,
    curve_to_json,
    froc_from_pooled,
    pool_matches,
    recall_of,
    sensitivity_at_fp,
)
from common.metrics.matching import BOX_HIT_RULES, ImageMatch, match_image_boxes, match_image_masks
from common.metrics.readers import load_gt_coco
from common.metrics.validation import (
    check_box,
    check_canonical_stems,
    check_prob,
    check_run_args,
    check_threshold,
    check_types,
    is_id,
    is_number,
    spacing_of,
)

__all__ = ["evaluate_boxes", "evaluate_masks"]

logger = logging.getLogger(__name__)


def _is_canonical(obj: Any) -> bool:
    """A COCO dataset (a canonical ``calcifications.json``) rather than a stem -> points mapping."""
    return isinstance(obj, dict) and "images" in obj and "annotations" in obj


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
def _index_boxes(gt: dict, src: str, predictions, pred_src: str):
    """Validate GT and predictions; group them by image (GT in annotation order, predictions in list
    order)."""
    image_ids = []
    for i, im in enumerate(gt["images"]):
        if not isinstance(im, Mapping) or "id" not in im:
            raise InputError(src, f"images[{i}] has no 'id'")
        if not is_id(im["id"]):
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
        if not is_id(c.get("id")):
            raise InputError(
                src, f"categories[{i}]: id {c.get('id')!r} is not an integer or a string"
            )
        cats.append(c["id"])
    gt_by_img: dict = defaultdict(list)
    for i, a in enumerate(annotations):
        what = f"annotations[{i}]"
        if not is_id(a.get("image_id")) or a.get("image_id") not in known:
            raise InputError(src, f"{what}: unknown image_id {a.get('image_id')!r}")
        b = check_box(src, what, a.get("bbox"))
        cat = a.get("category_id", cats[0] if len(cats) == 1 else None)
        if cat is not None and not is_id(cat):
            raise InputError(src, f"{what}: category_id {cat!r} is not an integer or a string")
        if cat not in cats:
            cats.append(cat)  # a GT category missing from 'categories' still has to be evaluated
        area = a.get("area")
        if area is not None and (not is_number(area) or not math.isfinite(area) or area < 0):
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
        if not is_id(p.get("image_id")) or p.get("image_id") not in known:
            raise InputError(pred_src, f"[{i}]: unknown image_id {p.get('image_id')!r}")
        b = check_box(pred_src, f"[{i}]", p.get("bbox"))
        if not is_number(p.get("score")):
            raise InputError(pred_src, f"[{i}]: missing or non-numeric score {p.get('score')!r}")
        s = float(p["score"])
        if not math.isfinite(s):
            raise InputError(pred_src, f"[{i}]: score is {s}")
        cat = p.get("category_id", cats[0] if len(cats) == 1 else None)
        if cat is not None and not is_id(cat):
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
        gt_coco: COCO dict or path. Every image in ``images`` is evaluated (lesion-free ones count
            in FP per image). Boxes ``bbox`` XYWH in original image pixels. ``iscrowd`` regions are
            not lesions; a prediction hitting only them is ignored.
        predictions: COCO results list (or path): ``image_id``, ``bbox`` XYWH, ``score``,
            ``category_id`` (optional when the GT has one category).
        hit: FROC / recall hit rule: ``"iou"`` (IoU >= iou_thr), ``"center"`` (box centre inside the
            GT box) or ``"iop"`` (intersection over predicted area >= iou_thr).
        iou_thr: threshold of the hit rule. AP is always at IoU 0.5.
        fps: FP-per-image levels of ``sensitivity_at_fp``.
        bootstrap: number of bootstrap replicates (0 = none); images are resampled, or patients when
            every GT image has a ``patient_id``.
        max_dets: per-image, per-category cap of the COCO AP only (FROC and recall use every
            prediction).

    Returns:
        dict: ``ap50_coco`` (pycocotools AP at IoU .5, areaRng all, maxDets 100), ``ap50_voc``
        (VOC2010+ all-point AP, same greedy matching, no cap), ``recall`` (fraction of lesions hit
        at any score), ``sensitivity_at_fp`` {"1": ...}, ``froc`` {thresholds, fp_per_image,
        sensitivity, n_fp, n_found}, counts and settings, and ``bootstrap`` when asked. FROC and
        recall are class-agnostic (a prediction may hit a GT box of any category); AP is averaged
        over the GT categories as COCO does. Undefined values (no lesion at all) are None.

    Raises:
        InputError: unknown image id, bad bbox, NaN score, unknown category, wrongly typed field
            (a bool id, a string bbox or score), unreadable file.
        ValueError: bad argument (unknown hit rule, ``iou_thr`` not in (0, 1], negative
            ``bootstrap``/``seed``, non-finite ``fps``).
    """
    if hit not in BOX_HIT_RULES:
        raise ValueError(f"unknown hit rule {hit!r}; choose from {sorted(BOX_HIT_RULES)}")
    iou_thr = check_threshold("iou_thr", iou_thr)
    fps = check_run_args(fps, bootstrap, seed)
    gt, src = load_gt_coco(gt_coco)
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
def _types_from_canonical(coco: dict, src: str) -> dict[str, list[dict]]:
    check_canonical_stems(coco, src)
    stem_of = {im["id"]: im.get("stem") for im in coco["images"]}
    out: dict[str, list[dict]] = defaultdict(list)
    for i, a in enumerate(coco["annotations"]):
        if not isinstance(a, Mapping):
            raise InputError(src, f"annotations[{i}] is not an object")
        if a.get("calc_type") is not None and a.get("point") is not None:
            if not is_id(a.get("image_id")) or a.get("image_id") not in stem_of:
                raise InputError(src, f"annotations[{i}]: unknown image_id {a.get('image_id')!r}")
            out[stem_of[a["image_id"]]].append({"type": a["calc_type"], "point": a["point"]})
    return dict(out)



def _source(mapping: Mapping, stem: str) -> str:
    """The file behind ``stem`` when the mapping reads files (:class:`LazyFiles`), else ``stem``."""
    return mapping.source(stem) if hasattr(mapping, "source") else stem



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
        gt_masks: stem -> (H, W) GT mask (non-zero = calcification). Every stem is one evaluated
            image, lesion-free ones included. May be a lazy mapping (values are read one at a time).
        prob_maps: stem -> (H, W) float probabilities in [0, 1], same pixel frame as the GT.
        types: stem -> list of ``{"type": "dot"|"vessel"|"large", "point": [x, y]}``, or a canonical
            ``calcifications.json`` (dict or path; images need ``stem``, annotations ``calc_type``
            and ``point``). Each GT component takes the type of the first point inside it.
        iop_thr: IoP threshold of a true positive (paper: 0.25).
        binarize: probability threshold defining predicted components (kept fixed; the FROC then
            sweeps the component scores, i.e. their maximum probability).
        pixel_spacing: mm per pixel: a float, (row_mm, col_mm), or stem -> pair / None. When None
            and ``types`` is a canonical dataset, its images' ``pixel_spacing`` is used.
        patient_ids: stem -> patient id for the patient-level bootstrap (taken from a canonical
            ``types`` when None).
        missing: what a GT stem without probability map means: ``"error"`` (InputError) or
            ``"empty"`` (no prediction on that image, logged as a warning).
        min_area: the processed labels as ground truth (paper §4.2.1, :mod:`common.calcifications`):
            GT components smaller than this many pixels (one int, or stem -> int, e.g. from
            :func:`common.calcifications.min_area_pixels`) are grown to it before matching, as the
            U-Net's training target is. The lesions stay the annotated components. None = raw masks
            unless ``min_area_mm2`` is given.
        min_area_mm2, min_area_px: the processed labels with the minimum area converted per image
            from its ``pixel_spacing`` (as resolved above), ``min_area_px`` for images without one;
            used when ``min_area`` is None.

    Returns:
        dict: ``recall``, ``sensitivity_at_fp``, ``froc`` (see :mod:`common.metrics.froc`), counts,
        ``gt_labels`` ("processed" or "raw") with ``min_area_px`` [min, max] over the images, and
        when types are given ``per_type`` {type: {recall, sensitivity_at_fp, froc, n_lesions}}
        where, for type T, sensitivity = found T lesions / all T lesions while the FP axis stays the
        overall FP per image of all predictions (this is how the paper's Table 4 reads);
        ``n_untyped`` counts GT components without a type point (they count in the overall figures
        only). ``bootstrap`` (when asked) holds CIs of ``recall`` and ``sensitivity_at_fp``, overall
        and in ``per_type``. When every image has a pixel spacing: ``area_cm2`` (sum of the full
        image areas, not the breast areas: the metric has no breast mask), ``fp_per_cm2`` (false
        positives of all predictions / area_cm2) and ``froc.fp_per_cm2`` per threshold.

    Raises:
        InputError: size mismatch, NaN or out-of-range probability, missing or unknown prediction,
            wrongly typed field in ``types``, two canonical images sharing a stem.
        ValueError: bad argument (``iop_thr`` or ``binarize`` not in (0, 1], negative
            ``bootstrap``/``seed``, non-finite ``fps``).
    """
    if missing not in ("error", "empty"):
        raise ValueError("missing must be 'error' or 'empty'")
    iop_thr = check_threshold("iop_thr", iop_thr)
    binarize = check_threshold("binarize", binarize)
    fps = check_run_args(fps, bootstrap, seed)
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
        check_types(types, types_src)
    if canonical is not None:
        by_stem = check_canonical_stems(canonical, types_src)
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
            prob = check_prob(
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
        sp = spacing_of(pixel_spacing, stem)
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

