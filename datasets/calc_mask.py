"""One image's calcification ground truth: a mask built from the source's shapes, split into typed
8-connected components (:mod:`common.calcifications`).

Frame: original image pixels, (x, y) = (column, row), top-left origin; masks bool (H, W); boxes
``[x, y, w, h]`` pixel edges. Written as ``OUT/calc_masks/<stem>.png`` (uint8 0/255) with one
``calcifications.json`` annotation per component.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from common.calcifications import describe_components, label_components
from common.canonical import CALC_TYPES, MASK_DIR
from common.io import atomic_write_png
from datasets.shapes import (
    POINT_RADIUS,
    box_to_mask,
    circle_to_mask,
    points_to_mask,
    polygon_to_mask,
)

_TYPE_CODE = {None: 0, "dot": 1, "vessel": 2, "large": 3}  # higher code wins inside one component
_CODE_TYPE = {v: k for k, v in _TYPE_CODE.items()}


def calc_components(mask: np.ndarray, type_map: np.ndarray | None = None) -> list[dict]:
    """Split a calcification mask into 8-connected components (:mod:`common.calcifications`).

    Args:
        mask: bool (H, W).
        type_map: optional uint8 (H, W) of source type codes (0 none, 1 dot, 2 vessel, 3 large) as
            painted by :class:`CalcMask`; a component takes the highest code under it, components with
            none are typed by :func:`common.calcifications.classify_component`.

    Returns:
        One dict per component, in label order: ``bbox`` [x, y, w, h] (pixel edges), ``area`` (px),
        ``calc_type``, ``point`` [x, y] (a pixel of the component).
    """
    labels, n = label_components(mask)
    stated = {}
    if n and type_map is not None:
        codes = ndi.maximum(type_map, labels, index=np.arange(1, n + 1))
        stated = {i: _CODE_TYPE[int(c)] for i, c in enumerate(codes, start=1) if int(c)}
    return [
        {
            "bbox": [float(v) for v in c["bbox"]],
            "area": float(c["area"]),
            "calc_type": c["type"],
            "point": c["point"],
        }
        for c in describe_components(labels, n, types=stated)
    ]


class CalcMask:
    """Accumulates the calcification shapes of one (H, W) image into a mask plus the source types.

    Each ``add_*`` takes an optional ``calc_type`` the source states ("dot", "vessel", "large");
    shapes without one are typed per component by :func:`common.calcifications.classify_component`.
    ``add_*`` return the number of pixels the shape covers inside the image (0 = entirely outside).
    Shape coordinates are (x, y) original image pixels (:mod:`datasets.shapes`).
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.mask = np.zeros(self.shape, bool)
        self.types = np.zeros(self.shape, np.uint8)

    def add_mask(self, mask: np.ndarray, calc_type: str | None = None) -> int:
        """Add a bool (H, W) mask of the image's size."""
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image {self.shape}")
        if calc_type is not None and calc_type not in CALC_TYPES:
            raise ValueError(f"calc_type must be one of {CALC_TYPES}, got {calc_type!r}")
        self.mask |= mask
        code = _TYPE_CODE[calc_type]
        if code:
            np.maximum(self.types, np.where(mask, code, 0).astype(np.uint8), out=self.types)
        return int(mask.sum())

    def add_polygon(self, points, calc_type: str | None = None) -> int:
        """Add a filled polygon outline (N, 2) (x, y)."""
        return self.add_mask(polygon_to_mask(points, self.shape), calc_type)

    def add_circle(self, center, radius: float, calc_type: str | None = None) -> int:
        """Add a filled disc of ``radius`` px around ``center`` (x, y)."""
        return self.add_mask(circle_to_mask(center, radius, self.shape), calc_type)

    def add_points(self, points, calc_type: str | None = "dot", radius: int = POINT_RADIUS) -> int:
        """Add point marks (N, 2) (x, y) as small discs (:func:`datasets.shapes.points_to_mask`)."""
        return self.add_mask(points_to_mask(points, self.shape, radius), calc_type)

    def add_box(self, bbox, calc_type: str | None = None) -> int:
        """Add a filled box ``[x, y, w, h]``."""
        return self.add_mask(box_to_mask(bbox, self.shape), calc_type)

    @property
    def empty(self) -> bool:
        return not self.mask.any()

    def components(self) -> list[dict]:
        """The typed components of the mask (:func:`calc_components`)."""
        return calc_components(self.mask, self.types)

    def finish(self, out_dir: str | Path, image: dict) -> list[dict]:
        """Write the mask of ``image`` (when not empty), set its ``mask_file``, return annotations."""
        if self.empty:
            image["mask_file"] = None
            return []
        image["mask_file"] = self.write(out_dir, image["stem"])
        return [{"image_id": image["id"], **c} for c in self.components()]

    def write(self, out_dir: str | Path, stem: str) -> str:
        """Write ``OUT/calc_masks/<stem>.png`` (uint8 0/255); returns the OUT-relative name."""
        rel = f"{MASK_DIR}/{stem}.png"
        atomic_write_png(Path(out_dir) / rel, self.mask.astype(np.uint8) * 255)
        return rel
