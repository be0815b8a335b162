"""Lesion-level metrics: matching, FROC, AP, bootstrap CIs, and the evaluations built on them.

Three stages (MONAI ``metrics/froc.py`` / nnDetection style):

1. :mod:`common.metrics.matching` -- per image, a pluggable hit rule (``iou`` / ``center`` / ``iop``
   for boxes, the paper's IoP rule for masks) gives an :class:`~common.metrics.matching.ImageMatch`;
2. :mod:`common.metrics.froc` -- pure curve functions over the pooled matches;
3. scalar scores: ``recall``, ``sensitivity_at_fp`` (keyed by :func:`~common.metrics.froc.fp_key`,
   read with :func:`~common.metrics.froc.at_fp`); :mod:`common.metrics.ap` for COCO / VOC AP50;
   :mod:`common.metrics.bootstrap` for confidence intervals.

:mod:`common.metrics.evaluation` runs the three stages on a whole data set
(:func:`evaluate_boxes` for masses, :func:`evaluate_masks` for calcifications), checking untrusted
input with :mod:`common.metrics.validation`; :mod:`common.metrics.readers` reads GT masks,
probability maps and prediction files. ``python -m common.evaluate`` is the command line over them.
"""

from common.metrics.evaluation import evaluate_boxes, evaluate_masks
from common.metrics.froc import DEFAULT_FPS, at_fp, fp_key, froc_curve, sensitivity_at_fp
from common.metrics.matching import ImageMatch, match_image_boxes, match_image_masks
from common.metrics.readers import LazyFiles, read_gt_mask, read_prob_map

__all__ = [
    "DEFAULT_FPS",
    "ImageMatch",
    "LazyFiles",
    "at_fp",
    "evaluate_boxes",
    "evaluate_masks",
    "fp_key",
    "froc_curve",
    "match_image_boxes",
    "match_image_masks",
    "read_gt_mask",
    "read_prob_map",
    "sensitivity_at_fp",
]
