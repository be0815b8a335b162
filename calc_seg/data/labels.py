"""Calcification label processing (paper §4.2.1).

Radiologists outline calcifications in three ways: single dots, calcified vessels and large regions
around crowded clusters (paper Fig. 7). This module

1. splits a ground-truth mask into 8-connected components,
2. gives each component a type, ``dot`` / ``vessel`` / ``large``
   (``common.calcifications.classify_component``), and
3. grows every component smaller than the minimum area until it reaches it
   (``common.calcifications.grow_small_components``), which makes the tiny dot labels consistent in size.
   The minimum area is ``min_area_mm2`` converted with the image's pixel spacing, or ``min_area`` pixels
   when the spacing is unknown (:meth:`LabelParams.min_area_for`). The grown mask is the training target
   *and* the IoP ground truth of validation and test (one label definition, ``common.calcifications``).

The classifier is a shape rule on the component alone (``common.calcifications.classify_component``,
shared with the dataset converters and inference), with thresholds in ``cfg.LABELS``:

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

from common.calcifications import (
    CALC_TYPES,
    DEFAULT_MIN_AREA_MM2,
    DEFAULT_MIN_AREA_PX,
    LARGE_MIN_AREA_PX,
    VESSEL_MIN_ELONGATION,
    VESSEL_MIN_LENGTH_PX,
    describe_components,
    grow_small_components,
    label_components,
    min_area_pixels,
)


@dataclass(frozen=True)
class LabelParams:
    """Thresholds of the label processing; see the module docstring (all in original pixels)."""

    min_area: int = DEFAULT_MIN_AREA_PX  # used when the image's pixel spacing is unknown
    min_area_mm2: float = DEFAULT_MIN_AREA_MM2  # 0 = always use min_area (pixels)
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
            min_area_mm2=float(lab.MIN_AREA_MM2),
            vessel_min_length=float(lab.VESSEL_MIN_LENGTH),
            vessel_min_elongation=float(lab.VESSEL_MIN_ELONGATION),
            large_min_area=int(lab.LARGE_MIN_AREA),
            prefer_canonical_type=bool(lab.PREFER_CANONICAL_TYPE),
            exclude_types=tuple(lab.EXCLUDE_TYPES),
        )

    @property
    def type_rule(self) -> dict:
        """Keyword thresholds of ``common.calcifications.classify_component``."""
        return {
            "vessel_min_length": self.vessel_min_length,
            "vessel_min_elongation": self.vessel_min_elongation,
            "large_min_area": self.large_min_area,
        }

    def min_area_for(self, pixel_spacing) -> int:
        """Minimum area in pixels of an image with ``pixel_spacing`` ((row, col) mm or None)."""
        return min_area_pixels(pixel_spacing, self.min_area_mm2, self.min_area)


@dataclass
class ProcessedLabels:
    """Result of :func:`process_mask` for one image (arrays in the image frame, (H, W)).

    ``components``: one dict per original component: ``label`` (id in ``labels``), ``type``,
    ``type_source`` ("canonical" | "shape"), ``area`` (original pixels), ``bbox`` [x, y, w, h] and
    ``point`` [x, y] (a pixel inside).
    """

    labels: np.ndarray  # int32, 0 = background, 1..n original components
    train_mask: np.ndarray  # bool, the processed labels: small components grown to the minimum area
    excluded: np.ndarray  # bool, grown pixels of components whose type is in exclude_types
    components: list[dict] = field(default_factory=list)
    min_area: int = 0  # the minimum area in pixels that was applied


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
    mask: np.ndarray,
    params: LabelParams = LabelParams(),
    canonical: Sequence[dict] | None = None,
    pixel_spacing=None,
) -> ProcessedLabels:
    """Components, types, processed training mask and excluded pixels of one ground-truth mask.

    Args:
        mask: (H, W) ground truth, non-zero = calcification, original image frame.
        params: thresholds.
        canonical: optional annotations with ``calc_type`` and ``point`` [x, y] (image pixels), e.g. the
            image's entries of ``calcifications.json``; used when ``params.prefer_canonical_type``.
        pixel_spacing: (row_mm, col_mm) of the image, or None (then ``params.min_area`` pixels).
    """
    labels, n = label_components(mask)
    from_ann = _canonical_types(labels, canonical) if params.prefer_canonical_type else {}
    components = []
    for c in describe_components(labels, n, types=from_ann, type_rule=params.type_rule):
        source = "canonical" if c["label"] in from_ann else "shape"
        components.append({"label": c["label"], "type": c["type"], "type_source": source,
                           "area": c["area"], "bbox": c["bbox"], "point": c["point"]})
    excluded_ids = [c["label"] for c in components if c["type"] in params.exclude_types]
    min_area = params.min_area_for(pixel_spacing)
    grown = grow_small_components(labels, min_area) if n else labels
    # the grown extent, so that no patch holds part of a grown vessel / large label
    excluded = np.isin(grown, excluded_ids) if excluded_ids else np.zeros(labels.shape, dtype=bool)
    return ProcessedLabels(labels=labels, train_mask=grown > 0, excluded=excluded,
                           components=components, min_area=min_area)
