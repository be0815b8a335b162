"""Lesion-level metrics: per-image matching, FROC, AP, bootstrap CIs.

Three stages (MONAI ``metrics/froc.py`` / nnDetection style):

1. :mod:`common.metrics.matching` -- per image, a pluggable hit rule (``iou`` / ``center`` / ``iop`` for
   boxes, the paper's IoP rule for masks) gives an :class:`~common.metrics.matching.ImageMatch`;
2. :mod:`common.metrics.froc` -- pure curve functions over the pooled matches;
3. scalar scores: ``recall``, ``sensitivity_at_fp``; :mod:`common.metrics.ap` for COCO / VOC AP50.

``evaluate_boxes`` and ``evaluate_masks`` (defined in :mod:`common.evaluate`, next to the CLI) are
re-exported here lazily, so that ``common.evaluate`` and this package can import each other's parts
without an import cycle.
"""

from common.metrics.froc import froc_curve, sensitivity_at_fp
from common.metrics.matching import ImageMatch, match_image_boxes, match_image_masks

__all__ = [
    "ImageMatch",
    "evaluate_boxes",
    "evaluate_masks",
    "froc_curve",
    "match_image_boxes",
    "match_image_masks",
    "sensitivity_at_fp",
]


def __getattr__(name: str):
    if name in ("evaluate_boxes", "evaluate_masks"):
        from common import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
