"""The calcification label definition shared by training and scoring (paper §4.2.1).

Radiologists outline calcifications as single dots of a few pixels, calcified vessels and large regions
around crowded clusters. The paper processes the labels "for easy use and evaluation": every 8-connected
component smaller than a minimum area is grown to that area. The same processed labels are the training
target of the U-Net (``calc_seg.data.labels``) and the ground truth of the IoP rule (``common.evaluate``,
``calc_seg.engine.trainer``), so that a model that reproduces its target exactly scores every lesion as
found. Scoring against the raw masks stays available (``--gt-labels raw``).

The minimum area is physical: ``min_area_mm2`` (default 6.5 mm², the paper's 900 px on its 3518x2800
images at about 85 µm per pixel: 900 x 0.085² = 6.5 mm²) converted to pixels with the image's pixel
spacing, so one setting serves film scans at 50 µm, INbreast at 70 µm and any detector. When an image has
no known spacing the pixel count ``min_area_px`` (default the paper's 900) is used.

Frames: masks and label images are (H, W) in the original image frame, rows = y, columns = x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

CALC_TYPES = ("dot", "vessel", "large")

# Type rule of a component (classify_component). The paper (§4.3, Table 2) sorts calcification labels
# into dots, vessels and large regions "according to the area and shape" without thresholds; these are
# ours, in pixels of the component's image. Converters, label processing (cfg.LABELS) and inference
# share them.
VESSEL_MIN_LENGTH_PX = 40  # skeleton pixels
VESSEL_MIN_ELONGATION = 8.0  # skeleton_length**2 / area, i.e. length over mean width
LARGE_MIN_AREA_PX = 1500  # px; a region outlined around a crowded cluster

# 900 px at 0.085 mm/px (paper §4.2.1 on 3518x2800 images of about 85 µm pixels)
DEFAULT_MIN_AREA_MM2 = 6.5
DEFAULT_MIN_AREA_PX = 900


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a binary (H, W) mask: (int32 labels, 0 = background; count).

    The one labelling of the project (ground truth, processed labels, metrics, predictions), by
    OpenCV's ``connectedComponents``; label ids are OpenCV's order.
    """
    m = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {m.shape}")
    if m.size == 0:
        return np.zeros(m.shape, np.int32), 0
    n, labels = cv2.connectedComponents(m, connectivity=8, ltype=cv2.CV_32S)
    return labels, int(n) - 1


def classify_component(
    component: np.ndarray,
    vessel_min_length: float = VESSEL_MIN_LENGTH_PX,
    vessel_min_elongation: float = VESSEL_MIN_ELONGATION,
    large_min_area: int = LARGE_MIN_AREA_PX,
) -> str:
    """Calcification type of one connected component (bool (H, W) or its crop) by size and shape.

    * "vessel": thin and long: the skeleton (``skimage.morphology.skeletonize``) has at least
      ``vessel_min_length`` pixels and ``skeleton_length**2 / area`` >= ``vessel_min_elongation``
      (holds for curved vessels too, unlike an ellipse's axis ratio);
    * "large": otherwise, an area of at least ``large_min_area`` pixels;
    * "dot": everything else (the default).
    """
    comp = np.asarray(component, dtype=bool)
    ys, xs = np.nonzero(comp)
    area = xs.size
    if area == 0:
        raise ValueError("empty component")
    crop = np.pad(comp[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 1)
    length = max(int(skeletonize(crop).sum()), 1)
    if length >= vessel_min_length and length * length / area >= vessel_min_elongation:
        return "vessel"
    return "large" if area >= large_min_area else "dot"


def component_point(component: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[int]:
    """[x, y] of the component pixel nearest its centroid (always inside, even for rings and curves).

    ``component`` is bool (H, W) or a crop of it whose top-left pixel is ``offset`` (x, y).
    """
    ys, xs = np.nonzero(component)
    if xs.size == 0:
        raise ValueError("empty component")
    i = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return [int(xs[i]) + int(offset[0]), int(ys[i]) + int(offset[1])]


def describe_components(
    labels: np.ndarray,
    n: int | None = None,
    *,
    prob: np.ndarray | None = None,
    types: Mapping[int, str] | None = None,
    type_rule: Mapping[str, float] | None = None,
) -> list[dict]:
    """Box, area, a point inside, type (and score) of every labelled component, in label order.

    Args:
        labels: int (H, W) from :func:`label_components` (0 = background, components 1..n).
        n: number of components (default ``labels.max()``).
        prob: optional float (H, W) probability map; adds ``score``, the component's maximum
            probability rounded to 6 decimals (the score a FROC sweeps).
        types: optional ``{label: type}`` stated by a source (annotation, converter); other
            components are typed by :func:`classify_component`.
        type_rule: keyword thresholds of :func:`classify_component` (default its defaults).

    Returns:
        One dict per component: ``label``, ``bbox`` [x, y, w, h] (int, pixel edges, top-left origin
        of the labels' frame), ``area`` (px), ``point`` [x, y] (:func:`component_point`), ``type``
        and, with ``prob``, ``score``.
    """
    labels = np.asarray(labels)
    n = int(labels.max()) if n is None and labels.size else int(n or 0)
    if n == 0:
        return []
    types = types or {}
    rule = dict(type_rule or {})
    if prob is not None:
        scores = ndi.maximum(prob, labels, index=np.arange(1, n + 1))
    out = []
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n), start=1):
        if sl is None:
            continue
        comp = labels[sl] == i
        x, y = int(sl[1].start), int(sl[0].start)
        c = {
            "label": i,
            "bbox": [x, y, int(sl[1].stop) - x, int(sl[0].stop) - y],
            "area": int(comp.sum()),
            "point": component_point(comp, (x, y)),
            "type": types.get(i) or classify_component(comp, **rule),
        }
        if prob is not None:
            c["score"] = round(float(scores[i - 1]), 6)
        out.append(c)
    return out


def min_area_pixels(
    pixel_spacing: Sequence[float] | float | None,
    min_area_mm2: float | None = DEFAULT_MIN_AREA_MM2,
    fallback_px: int = DEFAULT_MIN_AREA_PX,
) -> int:
    """Minimum component area in pixels of one image.

    Args:
        pixel_spacing: (row_mm, col_mm), one isotropic value, or None when unknown.
        min_area_mm2: physical minimum area; None or <= 0 means "use ``fallback_px``".
        fallback_px: pixel count used when the spacing or the physical area is unknown.

    Returns:
        ``round(min_area_mm2 / (row_mm * col_mm))`` (at least 1), else ``fallback_px``.
    """
    if not min_area_mm2 or min_area_mm2 <= 0 or pixel_spacing is None:
        return int(fallback_px)
    sp = (pixel_spacing, pixel_spacing) if np.isscalar(pixel_spacing) else tuple(pixel_spacing)
    try:
        r, c = float(sp[0]), float(sp[1])
    except (TypeError, ValueError, IndexError):
        return int(fallback_px)
    if not (np.isfinite(r) and np.isfinite(c)) or r <= 0 or c <= 0:
        return int(fallback_px)
    return max(1, int(round(min_area_mm2 / (r * c))))


def grow_small_components(
    labels: np.ndarray, min_area: int, margin: int | None = None
) -> np.ndarray:
    """Grow every component smaller than ``min_area`` pixels to at least ``min_area`` pixels.

    Growth is a disc: a small component takes the pixels within Euclidean distance ``r`` of it, with the
    smallest ``r`` that reaches ``min_area`` (all pixels at that exact distance are taken, so the area can
    exceed ``min_area`` by one ring). A component only grows into pixels that are closer to it than to any
    other component (its Voronoi cell), so neighbours never merge because of the growth and the number of
    components is unchanged; a component whose cell is smaller than ``min_area`` (crowded clusters, image
    corners) takes its whole cell within the search margin. The result is clipped to the image.

    Args:
        labels: int (H, W), 0 = background, components 1..n (see :func:`label_components`).
        min_area: target area in pixels.
        margin: search distance around a component's box; default large enough for a disc of
            ``min_area`` pixels in an image corner (a quarter disc).

    Returns:
        int32 (H, W) labels where small components are enlarged and large ones unchanged.
    """
    labels = np.asarray(labels)
    out = labels.astype(np.int32, copy=True)
    n = int(labels.max()) if labels.size else 0
    if n == 0 or min_area <= 1:
        return out
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    small = [i for i in range(1, n + 1) if 0 < areas[i] < min_area]
    if not small:
        return out
    if margin is None:
        margin = int(np.ceil(2.0 * np.sqrt(min_area / np.pi))) + 2
    # Voronoi cells of the components: the label of the nearest foreground pixel, for every pixel
    _, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    owner = labels[iy, ix]
    slices = ndi.find_objects(labels)
    h, w = labels.shape
    for i in small:
        sy, sx = slices[i - 1]
        y0, y1 = max(sy.start - margin, 0), min(sy.stop + margin, h)
        x0, x1 = max(sx.start - margin, 0), min(sx.stop + margin, w)
        comp = labels[y0:y1, x0:x1] == i
        dist = ndi.distance_transform_edt(~comp)
        cell = owner[y0:y1, x0:x1] == i
        d = np.sort(dist[cell])
        r = d[min(min_area, d.size) - 1]
        grow = cell & (dist <= r)
        region = out[y0:y1, x0:x1]
        region[grow & (region == 0)] = i
    return out
