"""Annotation shapes -> masks and boxes, for the converters (``datasets/<source>.py``).

Frame: every coordinate here is (x, y) = (column, row) in original image pixels, top-left origin,
sub-pixel floats allowed; an image shape is (H, W); masks are bool (H, W); boxes are ``[x, y, w, h]``
floats. :func:`mask_bbox` measures pixel edges (a one-pixel mask is 1 x 1), :func:`points_bbox`
measures outline coordinates (a one-point outline is 0 x 0).
"""

from __future__ import annotations

import cv2
import numpy as np

POINT_RADIUS = 2  # px; a point annotation becomes a small disc, calc_seg dilates it to 900 px later


def _as_points(points) -> np.ndarray:
    """(N, 2) float64 (x, y); ValueError on a non-finite coordinate."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(pts)):
        raise ValueError("non-finite coordinate")
    return pts


def coordinates_problem(points, shape: tuple[int, int]) -> str | None:
    """Why (x, y) points of a table or ROI file cannot be used on an (H, W) image, or None.

    Non-finite coordinates (``nan``, ``1e999``) and coordinates farther outside the image than one image
    size (no annotation tool produces them: the row is corrupt) are problems; points a little outside
    are not (the shapes are clipped to the image). Malformed input gives a reason, never an exception.
    """
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return "coordinates are not (x, y) numbers"
    if pts.size == 0:
        return "no coordinates"
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        x, y = pts[np.flatnonzero(bad)[0]]
        return f"non-finite coordinate ({x:g}, {y:g})"
    h, w = shape
    far = (pts[:, 0] < -w) | (pts[:, 0] > 2 * w) | (pts[:, 1] < -h) | (pts[:, 1] > 2 * h)
    if far.any():
        x, y = pts[np.flatnonzero(far)[0]]
        return f"coordinate ({x:g}, {y:g}) far outside the {w}x{h} image"
    return None


def leaves_image(points, shape: tuple[int, int]) -> bool:
    """Whether an (N, 2) (x, y) outline reaches past the image's outer pixel edges.

    Pixel centres are integers, so the image covers ``-0.5 .. W - 0.5`` by ``-0.5 .. H - 0.5``; a shape
    that leaves it is clipped when rasterised (the converters warn about it).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    return bool(np.any(pts < -0.5) or np.any(pts[:, 0] > w - 0.5) or np.any(pts[:, 1] > h - 0.5))


def polygon_to_mask(points, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a closed polygon outline ``(N, 2)`` (x, y) into a bool (H, W) mask with cv2.fillPoly.

    The outline itself is drawn too, so one- or two-pixel-wide polygons are never empty. Parts
    outside the image are clipped.
    """
    mask = np.zeros(shape, np.uint8)
    pts = np.round(_as_points(points)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1)
    cv2.polylines(mask, [pts], True, 1)
    return mask.astype(bool)


def circle_to_mask(center, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """Filled disc of ``radius`` px around ``center`` (x, y), clipped to the image; bool (H, W)."""
    h, w = shape
    cx, cy = (float(v) for v in center)
    yy, xx = np.ogrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= float(radius) ** 2


def points_to_mask(points, shape: tuple[int, int], radius: int = POINT_RADIUS) -> np.ndarray:
    """Small discs (``radius`` px) at each (x, y) point, joined by a line when there are two.

    Raw point marks (INbreast's one- and two-point calcification ROIs); calc_seg dilates them later.
    """
    mask = np.zeros(shape, np.uint8)
    pts = np.round(_as_points(points)).astype(np.int32)
    for x, y in pts:
        cv2.circle(mask, (int(x), int(y)), int(radius), 1, thickness=-1)
    if len(pts) == 2:
        cv2.line(mask, tuple(map(int, pts[0])), tuple(map(int, pts[1])), 1, thickness=1)
    return mask.astype(bool)


def box_to_mask(bbox, shape: tuple[int, int]) -> np.ndarray:
    """Filled box ``[x, y, w, h]`` (pixels it overlaps), clipped to the image; bool (H, W)."""
    h, w = shape
    x, y, bw, bh = (float(v) for v in bbox)
    mask = np.zeros(shape, bool)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
    mask[y0:y1, x0:x1] = True
    return mask


def mask_bbox(mask: np.ndarray) -> list[float] | None:
    """``[x, y, w, h]`` covering every True pixel (pixel edges: w = last col - first col + 1)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [
        float(cols[0]),
        float(rows[0]),
        float(cols[-1] - cols[0] + 1),
        float(rows[-1] - rows[0] + 1),
    ]


def points_bbox(points) -> list[float]:
    """``[x, y, w, h]`` of the extent of (x, y) points (outline coordinates, not pixel edges)."""
    pts = _as_points(points)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def polygon_area(points) -> float:
    """Area enclosed by a polygon outline (x, y) in px² (shoelace formula)."""
    pts = _as_points(points)
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2.0)


def clip_bbox(bbox, shape: tuple[int, int]) -> list[float] | None:
    """Clip ``[x, y, w, h]`` to an (H, W) image; None when nothing of it is inside."""
    h, w = shape
    x, y, bw, bh = (float(v) for v in bbox)
    x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
    x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def outline_mass(points, shape: tuple[int, int]) -> dict | None:
    """A mass annotation from a polygon outline ``(N, 2)`` (x, y) on an (H, W) image, or None.

    Returns ``bbox`` (the outline's extent clipped to the image, outline coordinates), ``area`` (px²
    enclosed, :func:`polygon_area`) and ``segmentation`` (the outline as one flat COCO polygon,
    unclipped). None when the outline has fewer than three points or lies entirely outside the image.
    """
    pts = _as_points(points)
    box = clip_bbox(points_bbox(pts), shape) if len(pts) >= 3 else None
    if box is None:
        return None
    return {"bbox": box, "area": polygon_area(pts), "segmentation": [pts.reshape(-1).tolist()]}


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (flat [x0, y0, x1, y1, ...]) of the outer contours of a bool mask."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
