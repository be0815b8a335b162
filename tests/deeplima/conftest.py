"""Fixtures of the deeplima tests."""

from __future__ import annotations

import numpy as np
import pytest

from deeplima.pipeline import ImageResult


@pytest.fixture(scope="session")
def with_known_findings():
    """``build(res, masses, calc_scores, peak)``: ``res`` (an ImageResult of the pipeline) with
    ``masses`` and three calcification components in place of what the random models found:
    a 3x4 dot (label 1, score ``calc_scores[0]``, a finding), a one-pixel dot below threshold
    (label 2, score 0.4) and a 6x12 large region (label 3, score ``calc_scores[1]``, a finding);
    the probability map is ``peak`` on the findings, 0.4 on the dot below threshold, 0.02
    elsewhere. Thresholds are 0.5 for both kinds."""
    def build(res, masses: list[dict], calc_scores: tuple[float, float], peak: float):
        h, w = res.shape
        labels = np.zeros((h, w), np.int32)
        labels[100:104, 150:153] = 1
        labels[200, 60] = 2
        labels[250:262, 180:186] = 3
        prob = np.where(labels > 0, peak, 0.02).astype(np.float32)
        prob[labels == 2] = 0.4
        calcs = [
            {"label": 1, "bbox": [150, 100, 3, 4], "area": 12, "score": calc_scores[0],
             "type": "dot", "point": [151, 101], "finding": True},
            {"label": 2, "bbox": [60, 200, 1, 1], "area": 1, "score": 0.4, "type": "dot",
             "point": [60, 200], "finding": False},
            {"label": 3, "bbox": [180, 250, 6, 12], "area": 72, "score": calc_scores[1],
             "type": "large", "point": [181, 251], "finding": True},
        ]
        return ImageResult(res.source, res.image, res.breast_mask, masses, calcs, prob, labels,
                           res.record, {"mass": 0.5, "calc": 0.5}, dict(res.timings))

    return build
