"""Calcification label processing (paper §4.2.1).

Radiologists outline calcifications in three ways: single dots, calcified vessels and large regions
around crowded clusters (paper Fig. 7). This module

1. splits a ground-truth mask into 8-connected components,
2. gives each component a type, ``dot`` / ``vessel`` / ``large`` (:func:`classify_component`), and
3. dilates every component smaller than ``min_area`` pixels until it reaches ``min_area``
   (:func:`dilate_small_components`), which makes the tiny dot labels consistent in size.

The classifier is a shape rule on the component alone (``datasets.canonical.classify_component``, shared
with the dataset converters), with thresholds in ``cfg.LABELS``:

* **vessel**: thin and long. The skeleton (``skimage.morphology.skeletonize``) has at least
  ``vessel_min_length`` pixels and ``skeleton_length**2 / area`` (length over mean width) is at least
  ``vessel_min_elongation``. This also holds for curved vessels, unlike the ellipse axis ratio.
* **large**: otherwise, an area of at least ``large_min_area`` pixels (a cluster outlined as a region).
* **dot**: everything else.

When the dataset's ``calcifications.json`` gives a ``calc_type`` with a ``point`` inside a component,
that annotation wins (:func:`process_mask` with ``canonical``): it is what the radiologist or the dataset
converter recorded. The classifier decides only components without such a point.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from datasets.canonical import LARGE_MIN_AREA_PX, VESSEL_MIN_ELONGATION, VESSEL_MIN_LENGTH_PX

CALC_TYPES = ("dot", "vessel", "large")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LabelParams:
    """Thresholds of the label processing; see the module docstring (all in original pixels)."""

    min_area: int = 900
    vessel_min_length: float = VESSEL_MIN_LENGTH_PX
    vessel_min_elongation: float = VESSEL_MIN_ELONGATION
    large_min_area: int = LARGE_MIN_AREA_PX
    prefer_canonical_type: bool = True
    exclude_types: tuple[str, ...] = ("vessel", "large")

    @classmethod
    def from_cfg(cls, cfg) -> LabelParams:
        lab = cfg.LABELS
        return cls(
            min_area=int(lab.MIN_AREA),
            vessel_min_length=float(lab.VESSEL_MIN_LENGTH),
            vessel_min_elongation=float(lab.VESSEL_MIN_ELONGATION),
            large_min_area=int(lab.LARGE_MIN_AREA),
            prefer_canonical_type=bool(lab.PREFER_CANONICAL_TYPE),
            exclude_types=tuple(lab.EXCLUDE_TYPES),
        )


@dataclass
class ProcessedLabels:
    """Result of :func:`process_mask` for one image (arrays in the image frame, (H, W)).

    ``components``: one dict per original component: ``label`` (id in ``labels``), ``type``,
    ``type_source`` ("canonical" | "shape"), ``area`` (original pixels), ``bbox`` [x, y, w, h] and
    ``point`` [x, y] (a pixel inside).
    """

    labels: np.ndarray  # int32, 0 = background, 1..n original components
    train_mask: np.ndarray  # bool, original components with the small ones dilated to min_area
    excluded: np.ndarray  # bool, (dilated) pixels of components whose type is in exclude_types
    components: list[dict] = field(default_factory=list)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a binary mask: (int32 labels (H, W), count)."""
    labels, n = ndi.label(np.asarray(mask) > 0, structure=EIGHT_CONNECTED)
    return labels.astype(np.int32, copy=False), int(n)


def classify_component(component: np.ndarray, params: LabelParams | None = None) -> str:
    """Type of one 8-connected component (bool (H, W) or a crop): "dot", "vessel" or "large".

    The rule is ``datasets.canonical.classify_component`` (the one the dataset converters use for shapes
    whose type the source does not state), with the thresholds of ``params`` (``cfg.LABELS``).
    """
    from datasets.canonical import classify_component as canonical_rule

    p = params or LabelParams()
    return canonical_rule(
        component,
        vessel_min_length=p.vessel_min_length,
        vessel_min_elongation=p.vessel_min_elongation,
        large_min_area=p.large_min_area,
    )


def dilate_small_components(
    labels: np.ndarray, min_area: int, margin: int | None = None
) -> np.ndarray:
    """Grow every component smaller than ``min_area`` pixels to at least ``min_area`` pixels.

    Growth is a disc: a small component takes the pixels within Euclidean distance ``r`` of it, with the
    smallest ``r`` that reaches ``min_area`` (all pixels at that exact distance are taken, so the area can
    exceed ``min_area`` by one ring). A component only grows into pixels that are closer to it than to any
    other component (its Voronoi cell), so neighbours never merge because of the dilation; a component
    whose cell is smaller than ``min_area`` (crowded clusters, image corners) takes its whole cell within
    the search margin. The result is clipped to the image.

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


def _canonical_types(labels: np.ndarray, canonical: Sequence[dict] | None) -> dict[int, str]:
    votes: dict[int, Counter] = {}
    for ann in canonical or ():
        t, pt = ann.get("calc_type") or ann.get("type"), ann.get("point")
        if t not in CALC_TYPES or pt is None:
            continue
        x, y = int(round(pt[0])), int(round(pt[1]))
        if 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1] and labels[y, x] > 0:
            votes.setdefault(int(labels[y, x]), Counter())[t] += 1
    return {k: c.most_common(1)[0][0] for k, c in votes.items()}


def process_mask(
    mask: np.ndarray, params: LabelParams = LabelParams(), canonical: Sequence[dict] | None = None
) -> ProcessedLabels:
    """Components, types, dilated training mask and excluded pixels of one ground-truth mask.

    Args:
        mask: (H, W) ground truth, non-zero = calcification, original image frame.
        params: thresholds.
        canonical: optional annotations with ``calc_type`` and ``point`` [x, y] (image pixels), e.g. the
            image's entries of ``calcifications.json``; used when ``params.prefer_canonical_type``.
    """
    labels, n = label_components(mask)
    from_ann = _canonical_types(labels, canonical) if params.prefer_canonical_type else {}
    components = []
    excluded_ids = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == i
        if i in from_ann:
            ctype, source = from_ann[i], "canonical"
        else:
            ctype, source = classify_component(comp, params), "shape"
        ys, xs = np.nonzero(comp)
        k = len(ys) // 2
        components.append(
            {
                "label": i,
                "type": ctype,
                "type_source": source,
                "area": int(comp.sum()),
                "bbox": [int(sl[1].start), int(sl[0].start), int(sl[1].stop - sl[1].start),
                         int(sl[0].stop - sl[0].start)],
                "point": [int(xs[k] + sl[1].start), int(ys[k] + sl[0].start)],
            }
        )
        if ctype in params.exclude_types:
            excluded_ids.append(i)
    grown = dilate_small_components(labels, params.min_area) if n else labels
    # the dilated extent, so that no patch holds part of a grown vessel / large label
    excluded = np.isin(grown, excluded_ids) if excluded_ids else np.zeros(labels.shape, dtype=bool)
    return ProcessedLabels(labels=labels, train_mask=grown > 0, excluded=excluded, components=components)
