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

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

CALC_TYPES = ("dot", "vessel", "large")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# 900 px at 0.085 mm/px (paper §4.2.1 on 3518x2800 images of about 85 µm pixels)
DEFAULT_MIN_AREA_MM2 = 6.5
DEFAULT_MIN_AREA_PX = 900


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a binary (H, W) mask: (int32 labels, 0 = background; count)."""
    labels, n = ndi.label(np.asarray(mask) != 0, structure=EIGHT_CONNECTED)
    return labels.astype(np.int32, copy=False), int(n)


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
