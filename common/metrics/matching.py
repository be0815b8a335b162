"""Per-image matching of predicted lesions to ground-truth lesions.

One image at a time, a *hit rule* decides which predictions meet which ground-truth (GT) lesions;
the result is an :class:`ImageMatch` that the pure curve functions of :mod:`common.metrics.froc`
consume. This is the first of three stages (match per image -> curve -> scalar scores), as in MONAI
``metrics/froc.py`` and nnDetection ``evaluator/detection``.

Hit rules for boxes (all boxes ``(N, 4)`` float64, **XYWH**, top-left origin, x = column, original
image pixels):

* ``"iou"``    -- IoU(pred, gt) >= thr (COCO arithmetic: no +1 pixel, see :func:`box_iou`);
* ``"center"`` -- the centre of the predicted box lies inside the GT box (borders included);
* ``"iop"``    -- intersection over prediction area >= thr.

For masks (calcifications, the paper's section 4.2.2) the rule is IoP between a predicted
8-connected component and the whole GT mask, see :func:`match_image_masks`.

FROC semantics shared by every rule: a prediction is a *hit* when it meets the rule with at least
one GT lesion of its image; it *finds* every GT lesion it meets the rule with; a lesion is found
once however many hits it has, and extra hits are not false positives; every non-hit prediction is a
false positive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# 8-connected components (the paper's predicted and GT lesions) and the processed-label growth
from common.calcifications import grow_small_components, label_components


@dataclass
class ImageMatch:
    """Matching result of one image, the input of the FROC curve.

    Attributes:
        pred_scores: (P,) float64, confidence of every prediction.
        pred_hit: (P,) bool, the prediction meets the hit rule with at least one counted GT lesion.
        pred_ignored: (P,) bool, not a hit but meets the rule with an ignored region (COCO
            ``iscrowd`` boxes); neither a hit nor a false positive.
        lesion_scores: (G,) float64, per counted GT lesion the highest score among the predictions
            that find it, ``-inf`` when no prediction finds it. A lesion is found at threshold t iff
            its value is >= t.
        lesion_types: (G,) object array of type names (``None`` when untyped) or None.
        pixel_area: image area in pixels (masks only, for FP per cm^2).
    """

    pred_scores: np.ndarray
    pred_hit: np.ndarray
    pred_ignored: np.ndarray
    lesion_scores: np.ndarray
    lesion_types: np.ndarray | None = None
    pixel_area: int | None = None
    extras: dict = field(default_factory=dict)

    @property
    def pred_fp(self) -> np.ndarray:
        """(P,) bool, false positives: neither a hit nor ignored."""
        return ~self.pred_hit & ~self.pred_ignored


# -------------------------------------------------------------------------------------------- boxes
def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    return b.reshape(-1, 4)


def _intersection(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) intersection areas of XYWH boxes, computed exactly like pycocotools' ``bbIou`` (C)."""
    w = np.minimum(dt[:, None, 2] + dt[:, None, 0], gt[None, :, 2] + gt[None, :, 0]) - np.maximum(
        dt[:, None, 0], gt[None, :, 0]
    )
    h = np.minimum(dt[:, None, 3] + dt[:, None, 1], gt[None, :, 3] + gt[None, :, 1]) - np.maximum(
        dt[:, None, 1], gt[None, :, 1]
    )
    ok = (w > 0) & (h > 0)  # bbIou skips the pair (IoU 0) as soon as w <= 0 or h <= 0
    return np.where(ok, w * h, 0.0), ok


def box_iou(dt, gt, gt_crowd=None) -> np.ndarray:
    """IoU matrix of predicted and GT boxes, bit-identical to ``pycocotools.mask.iou`` for boxes.

    Args:
        dt: (D, 4) XYWH predicted boxes.
        gt: (G, 4) XYWH GT boxes.
        gt_crowd: (G,) bool; for a crowd GT the denominator is the predicted area only (COCO rule).

    Returns:
        (D, G) float64. Areas are w*h without the +1 pixel of VOC.
    """
    dt, gt = _as_boxes(dt), _as_boxes(gt)
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    inter, ok = _intersection(dt, gt)
    da = (dt[:, 2] * dt[:, 3])[:, None]
    ga = (gt[:, 2] * gt[:, 3])[None, :]
    union = da + ga - inter
    if gt_crowd is not None:
        union = np.where(np.asarray(gt_crowd, dtype=bool)[None, :], da, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def box_iop(dt, gt) -> np.ndarray:
    """(D, G) intersection over the *predicted* box area (0 for an empty predicted box)."""
    dt, gt = _as_boxes(dt), _as_boxes(gt)
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    inter, ok = _intersection(dt, gt)
    da = np.broadcast_to((dt[:, 2] * dt[:, 3])[:, None], inter.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok & (da > 0), inter / np.where(da > 0, da, 1.0), 0.0)


def box_center_inside(dt, gt) -> np.ndarray:
    """(D, G) bool: centre of the predicted XYWH box lies inside the GT box, borders included."""
    dt, gt = _as_boxes(dt), _as_boxes(gt)
    cx = (dt[:, 0] + dt[:, 2] / 2)[:, None]
    cy = (dt[:, 1] + dt[:, 3] / 2)[:, None]
    return (
        (cx >= gt[None, :, 0])
        & (cx <= gt[None, :, 0] + gt[None, :, 2])
        & (cy >= gt[None, :, 1])
        & (cy <= gt[None, :, 1] + gt[None, :, 3])
    )


def _hit_iou(dt, gt, crowd, thr):
    return box_iou(dt, gt, crowd) >= thr


def _hit_center(dt, gt, crowd, thr):
    return box_center_inside(dt, gt)


def _hit_iop(dt, gt, crowd, thr):
    return box_iop(dt, gt) >= thr


#: name -> f(dt (D,4) XYWH, gt (G,4) XYWH, gt_crowd (G,) bool, thr) -> (D, G) bool hit matrix.
BOX_HIT_RULES: dict[str, Callable[..., np.ndarray]] = {
    "iou": _hit_iou,
    "center": _hit_center,
    "iop": _hit_iop,
}


def match_image_boxes(
    pred_boxes,
    pred_scores,
    gt_boxes,
    gt_crowd=None,
    hit: str | Callable[..., np.ndarray] = "iou",
    thr: float = 0.5,
) -> ImageMatch:
    """FROC matching of one image's predicted boxes to its GT boxes.

    Args:
        pred_boxes: (P, 4) XYWH predicted boxes, original image pixels.
        pred_scores: (P,) confidences.
        gt_boxes: (G, 4) XYWH GT boxes.
        gt_crowd: (G,) bool, COCO ``iscrowd``: crowd regions are not counted as lesions; a
            prediction that meets the rule only with crowd regions is ignored (neither hit nor false
            positive).
        hit: a key of :data:`BOX_HIT_RULES` or a callable with the same signature.
        thr: threshold of the ``iou`` / ``iop`` rules (unused by ``center``).

    Returns:
        :class:`ImageMatch` whose lesions are the non-crowd GT boxes, in input order.
    """
    rule = BOX_HIT_RULES[hit] if isinstance(hit, str) else hit
    dt = _as_boxes(pred_boxes)
    gt = _as_boxes(gt_boxes)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    crowd = np.zeros(len(gt), bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(-1)
    if len(gt) and len(dt):
        hits = np.asarray(rule(dt, gt, crowd, thr), dtype=bool)
    else:
        hits = np.zeros((len(dt), len(gt)), bool)
    counted = hits[:, ~crowd]
    pred_hit = counted.any(axis=1)
    pred_ignored = ~pred_hit & hits[:, crowd].any(axis=1)
    lesion_scores = _lesion_scores(counted, scores)
    return ImageMatch(scores, pred_hit, pred_ignored, lesion_scores)


def _lesion_scores(hits: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(G,) max score over the predictions that find each lesion (``-inf`` when none)."""
    if hits.shape[0] == 0:
        return np.full(hits.shape[1], -np.inf)
    return np.where(hits, scores[:, None], -np.inf).max(axis=0)


# -------------------------------------------------------------------------------------------- masks
def assign_types(gt_labels: np.ndarray, n_lesions: int, points) -> np.ndarray:
    """Type name of each GT component from typed points.

    Args:
        gt_labels: (H, W) component labels (1..G) from :func:`label_components`.
        points: iterable of ``{"type": str, "point": [x, y]}`` (x = column, y = row, pixels).

    Returns:
        (G,) object array; the type of the first listed point that lies inside the component,
        ``None`` for a component without any point. Points outside every component are ignored;
        points outside the image raise ``ValueError``.
    """
    types = np.full(n_lesions, None, dtype=object)
    h, w = gt_labels.shape
    for p in points or ():
        x, y = (int(round(float(v))) for v in p["point"])
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"type point {p['point']} lies outside the {w}x{h} image")
        k = gt_labels[y, x]
        if k > 0 and types[k - 1] is None:
            types[k - 1] = str(p["type"])
    return types


def match_image_masks(
    gt_mask: np.ndarray,
    prob: np.ndarray,
    iop_thr: float = 0.25,
    binarize: float = 0.5,
    type_points=None,
    min_area: int | None = None,
) -> ImageMatch:
    """The paper's IoP matching (section 4.2.2) of one probability map against one GT mask.

    Predicted lesions are the 8-connected components of ``prob >= binarize``, each scored by its
    maximum probability. IoP = |component & GT| / |component| with GT the whole GT mask; IoP >=
    ``iop_thr`` makes the component a true positive (hit), otherwise it is a false positive. GT
    lesions are the 8-connected components of the GT mask; a lesion is found by every true-positive
    component that overlaps it (at least one pixel) and counts once.

    Args:
        gt_mask: (H, W) bool, non-zero = lesion.
        prob: (H, W) float probabilities in [0, 1], same frame as ``gt_mask``.
        type_points: optional list of ``{"type", "point": [x, y]}`` typing the GT components.
        min_area: when given, the processed labels are the ground truth (paper §4.2.1,
            :mod:`common.calcifications`): every GT component smaller than ``min_area`` pixels is
            grown to it, without merging neighbours, before matching. The lesions are still the
            annotated components (same count, same types), each with its grown extent. None = the
            raw mask.

    Returns:
        :class:`ImageMatch`; ``extras`` holds ``pred_area`` and ``pred_iop`` per component.
    """
    gt = np.asarray(gt_mask, dtype=bool)
    prob = np.asarray(prob)
    if gt.shape != prob.shape:
        raise ValueError(f"GT mask {gt.shape} and probability map {prob.shape} differ in size")
    gt_lab, n_gt = label_components(gt)
    if min_area is not None and n_gt:
        gt_lab = grow_small_components(gt_lab, int(min_area))
        gt = gt_lab > 0
    pr_lab, n_pr = label_components(prob >= binarize)

    fg = pr_lab > 0
    pr_ids = pr_lab[fg]
    area = np.bincount(pr_ids, minlength=n_pr + 1)[1:]
    on_gt = gt[fg]
    inter = np.bincount(pr_ids[on_gt], minlength=n_pr + 1)[1:]
    scores = np.full(n_pr + 1, -np.inf)
    np.maximum.at(scores, pr_ids, prob[fg].astype(np.float64))
    scores = scores[1:]
    iop = inter / np.maximum(area, 1)
    # IoP >= threshold counts (an IoP of exactly 0.25 is a hit); paper §4.2.2 words it as
    # "greater than", which differs only for components whose IoP is exactly the threshold.
    tp = iop >= iop_thr

    lesion_scores = np.full(n_gt, -np.inf)
    if n_gt and n_pr:
        # unique (component, lesion) overlap pairs, computed on the overlap pixels only
        pair = np.unique(pr_ids[on_gt].astype(np.int64) * (n_gt + 1) + gt_lab[fg][on_gt])
        p_idx, g_idx = pair // (n_gt + 1) - 1, pair % (n_gt + 1) - 1
        keep = tp[p_idx]
        np.maximum.at(lesion_scores, g_idx[keep], scores[p_idx[keep]])
    types = assign_types(gt_lab, n_gt, type_points) if type_points is not None else None
    return ImageMatch(
        pred_scores=scores,
        pred_hit=tp,
        pred_ignored=np.zeros(n_pr, bool),
        lesion_scores=lesion_scores,
        lesion_types=types,
        pixel_area=int(gt.size),
        extras={"pred_area": area, "pred_iop": iop},
    )
