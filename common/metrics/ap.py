"""Average precision at IoU 0.5: COCO (pycocotools) 101-point and VOC2010+ all-point.

The matching reproduces ``pycocotools.cocoeval.COCOeval.evaluateImg`` for one IoU threshold, area
range "all" and ``maxDets`` 100, decision by decision:

* per image and category, predictions are sorted by descending score with a *stable* mergesort (ties
  keep their order in the results list) and truncated to the first ``max_dets``;
* GT boxes are sorted so that ignored ones (``iscrowd`` or area outside [0, 1e10]) come last;
* each prediction in turn takes the not-yet-matched GT (crowd GT may be matched again) with the
  largest IoU >= thr (the last such GT on equal IoU); a non-ignored GT is preferred over an ignored
  one; a prediction matched to an ignored GT is ignored; an unmatched one is a false positive
  (duplicates are false positives);
* the pooled predictions of all images (image ids ascending) are sorted again by a stable mergesort;
  the precision envelope is sampled at the 101 recall levels 0, 0.01, ..., 1 (``searchsorted`` left,
  0 beyond the reached recall) and averaged; categories without non-ignored GT are skipped; the mean
  is over categories.

One known pycocotools defect is *not* reproduced: it stores the matched GT id in ``dtMatches`` and
treats 0 as "unmatched", so a GT annotation with id 0 turns its true positive into a false positive.
Here the match is recorded independently of the annotation id.

VOC AP uses the same matching without the ``max_dets`` truncation, and integrates the precision
envelope over every recall change (all-point interpolation, VOC2010+
``voc_ap(use_07_metric=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.metrics.matching import box_iou

#: COCO area range "all": [0 ** 2, 1e5 ** 2].
AREA_ALL = (0.0, 1e5**2)
#: pycocotools' recall levels, built with the very same expression as ``Params.setDetParams``.
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class ImageDetections:
    """COCO-matched predictions of one image and category, already in pycocotools order."""

    scores: np.ndarray  # (D,) descending (stable), truncated to max_dets
    tp: np.ndarray  # (D,) bool matched to a non-ignored GT
    # (D,) bool: matched to an ignored GT, or unmatched and outside the area range
    ignored: np.ndarray
    n_gt: int  # non-ignored GT count


def coco_match_image(
    pred_boxes,
    pred_scores,
    gt_boxes,
    gt_crowd=None,
    gt_area=None,
    iou_thr: float = 0.5,
    max_dets: int | None = 100,
) -> ImageDetections:
    """Greedy COCO matching of one image and one category (see the module docstring).

    Args:
        pred_boxes: (D, 4) XYWH; pred_scores: (D,) in results-list order.
        gt_boxes: (G, 4) XYWH in annotation order; gt_crowd: (G,) bool;
        gt_area: (G,) the annotations' ``area`` field (used only for the area-range ignore rule).
    """
    dt = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    sc = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    crowd = np.zeros(len(gt), bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(-1)
    area = gt[:, 2] * gt[:, 3] if gt_area is None else np.asarray(gt_area, np.float64).reshape(-1)
    gt_ig = crowd | (area < AREA_ALL[0]) | (area > AREA_ALL[1])

    order = np.argsort(-sc, kind="mergesort")
    if max_dets is not None:
        order = order[:max_dets]
    dt, sc = dt[order], sc[order]
    g_order = np.argsort(gt_ig, kind="mergesort")
    gt, crowd, gt_ig = gt[g_order], crowd[g_order], gt_ig[g_order]

    D, G = len(dt), len(gt)
    tp = np.zeros(D, bool)
    ignored = np.zeros(D, bool)
    matched_any = np.zeros(D, bool)
    if D and G:
        ious = box_iou(dt, gt, crowd)
        thr = min(iou_thr, 1 - 1e-10)
        gt_taken = np.zeros(G, bool)
        n_keep = int((~gt_ig).sum())
        over = ious >= thr
        # a prediction without any IoU >= thr never matches: skip it
        for d in np.flatnonzero(over.any(axis=1)):
            cand = (~gt_taken | crowd) & over[d]
            m = -1
            for part in (slice(0, n_keep), slice(n_keep, G)):  # non-ignored GT first
                c = np.flatnonzero(cand[part]) + (part.start or 0)
                if len(c):
                    best = ious[d, c]
                    m = int(c[np.flatnonzero(best == best.max())[-1]])  # last GT on equal IoU
                    break
            if m < 0:
                continue
            matched_any[d] = True
            ignored[d] = gt_ig[m]
            tp[d] = not gt_ig[m]
            gt_taken[m] = True
    det_area = dt[:, 2] * dt[:, 3]
    outside = (det_area < AREA_ALL[0]) | (det_area > AREA_ALL[1])
    ignored |= ~matched_any & outside
    return ImageDetections(sc, tp, ignored, int((~gt_ig).sum()))


def _pool(images: list[ImageDetections]):
    scores = np.concatenate([e.scores for e in images]) if images else np.zeros(0)
    tp = np.concatenate([e.tp for e in images]) if images else np.zeros(0, bool)
    ig = np.concatenate([e.ignored for e in images]) if images else np.zeros(0, bool)
    order = np.argsort(-scores, kind="mergesort")
    return scores[order], tp[order], ig[order], sum(e.n_gt for e in images)


def ap_coco_101(images: list[ImageDetections]) -> float:
    """COCO 101-point interpolated AP of one category (images in ascending image-id order).

    Returns NaN when the category has no non-ignored GT (pycocotools' -1).
    """
    _, tp, ig, npig = _pool(images)
    if npig == 0:
        return float("nan")
    tps = (tp & ~ig).astype(float)
    fps = (~tp & ~ig).astype(float)
    tp_sum, fp_sum = np.cumsum(tps), np.cumsum(fps)
    nd = len(tp_sum)
    if nd == 0:
        return 0.0
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
    inds = np.searchsorted(rc, REC_THRS, side="left")
    q = np.where(inds < nd, pr[np.minimum(inds, nd - 1)], 0.0)
    return float(np.mean(q))


def ap_voc_all_point(images: list[ImageDetections]) -> float:
    """VOC2010+ all-point AP of one category (NaN when there is no non-ignored GT)."""
    _, tp, ig, npig = _pool(images)
    if npig == 0:
        return float("nan")
    keep = ~ig
    tp = tp[keep].astype(float)
    if len(tp) == 0:
        return 0.0
    tp_sum = np.cumsum(tp)
    fp_sum = np.cumsum(1.0 - tp)
    rec = tp_sum / npig
    prec = tp_sum / (tp_sum + fp_sum)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def mean_over_categories(values: list[float]) -> float | None:
    """Mean of the per-category APs that are defined; None when none is (no GT at all)."""
    v = [x for x in values if not np.isnan(x)]
    return float(np.mean(v)) if v else None
