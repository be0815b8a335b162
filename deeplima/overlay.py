"""The one overlay drawer: full-size overlays of every prediction folder (``deeplima predict``,
``predict-mass``, ``predict-calc``; :mod:`deeplima.writer`) and the HTML report's thumbnails.

Colours (RGB) are fixed so every picture reads the same way: mass boxes orange, calcification
outlines cyan, ground truth green (report only). Scores are printed next to each finding. All inputs
are in the ORIGINAL image frame: boxes ``[x, y, w, h]`` in pixels (top-left origin, x = column),
masks (H, W) bool.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["CALC_COLOR", "GT_COLOR", "MASS_COLOR", "MISS_COLOR", "crop_around", "draw_findings",
           "thumbnail", "to_rgb"]

MASS_COLOR = (255, 140, 0)
CALC_COLOR = (0, 220, 255)
GT_COLOR = (40, 220, 40)
MISS_COLOR = (255, 40, 40)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8 copy."""
    g = np.asarray(gray)
    if g.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {g.dtype}")
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))


def line_width(shape) -> int:
    """Outline width in pixels for an image of ``shape``: 1 per 500 pixels of its shorter side."""
    return max(1, int(round(min(shape[:2]) / 500)))


def _label(rgb, text, x, y, color, scale_px):
    scale = max(0.35, scale_px / 30)
    thick = max(1, int(round(scale * 1.5)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = int(min(max(x, 0), max(rgb.shape[1] - tw, 0)))
    y = int(min(max(y, th + 2), rgb.shape[0] - 2))
    cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2,
                cv2.LINE_AA)
    cv2.putText(rgb, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def draw_findings(
    gray: np.ndarray,
    masses: Sequence[dict] = (),
    calc_mask: np.ndarray | None = None,
    calcs: Sequence[dict] = (),
    gt_boxes: Sequence[Sequence[float]] = (),
    gt_mask: np.ndarray | None = None,
    show_scores: bool = True,
    max_calc_labels: int = 30,
) -> np.ndarray:
    """Draw findings on a grey image.

    Args:
        gray: (H, W) uint8 image, original frame.
        masses: dicts with ``bbox`` [x, y, w, h] and ``score`` (drawn as orange boxes).
        calc_mask: (H, W) bool calcification mask, or None; its outlines are drawn in cyan.
        calcs: component dicts with ``bbox`` and ``score``: their scores are printed (the outline
            comes from ``calc_mask``).
        gt_boxes / gt_mask: ground truth to draw in green (report thumbnails).
        max_calc_labels: only the best-scoring components get a printed score (legibility).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    rgb = to_rgb(gray)
    lw = line_width(rgb.shape)
    text_px = max(10.0, min(rgb.shape[:2]) / 40)
    if gt_mask is not None and np.any(gt_mask):
        contours, _ = cv2.findContours(np.asarray(gt_mask, np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, GT_COLOR, lw)
    for b in gt_boxes:
        x, y, w, h = (int(round(v)) for v in b)
        cv2.rectangle(rgb, (x, y), (x + w, y + h), GT_COLOR, lw)
    if calc_mask is not None and np.any(calc_mask):
        contours, _ = cv2.findContours(np.asarray(calc_mask, np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, CALC_COLOR, lw)
    if show_scores:
        for c in sorted(calcs, key=lambda c: -c["score"])[:max_calc_labels]:
            x, y, w, h = c["bbox"]
            _label(rgb, f"{c['score']:.2f}", x + w + 2, y + h / 2, CALC_COLOR, text_px * 0.8)
    for m in masses:
        x, y, w, h = (int(round(v)) for v in m["bbox"])
        cv2.rectangle(rgb, (x, y), (x + w, y + h), MASS_COLOR, lw + 1)
        if show_scores:
            _label(rgb, f"{m['score']:.2f}", x, y - 4, MASS_COLOR, text_px)
    return rgb


def crop_around(rgb: np.ndarray, bbox: Sequence[float], context: float = 2.0, min_side: int = 96):
    """Square-ish crop of ``rgb`` centred on ``bbox`` [x, y, w, h], ``context`` times its size."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = (float(v) for v in bbox)
    side = max(bw, bh) * context
    side = max(side, min_side)
    cx, cy = x + bw / 2, y + bh / 2
    x0 = int(max(0, min(cx - side / 2, w - side)))
    y0 = int(max(0, min(cy - side / 2, h - side)))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    return rgb[y0:y1, x0:x1]


def thumbnail(rgb: np.ndarray, max_side: int = 256, enlarge: bool = False) -> np.ndarray:
    """Resize so the longer side is ``max_side``: area interpolation when shrinking; a smaller image
    is kept as is, or enlarged with nearest-neighbour interpolation (pixels stay visible) with
    ``enlarge``."""
    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    if s >= 1 and not enlarge:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (max(1, int(round(w * s))), max(1, int(round(h * s)))),
                      interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
