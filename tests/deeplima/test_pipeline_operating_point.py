"""Operating points read off common.metrics FROC curves (hand-made cases)."""

from __future__ import annotations

import pytest

from common.metrics import evaluate_boxes
from deeplima.operating_point import (
    OperatingPointError,
    choose_operating_points,
    resolve_thresholds,
    threshold_at_fp,
)


def _gt():
    # two images, one mass each
    return {
        "images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400},
        ],
        "categories": [{"id": 1, "name": "mass"}],
    }


def _pred(image_id, bbox, score):
    return {"image_id": image_id, "category_id": 1, "bbox": bbox, "score": score}


def test_threshold_for_k_false_positives_per_image():
    # scores: 0.9 hit (img 1), 0.8 FP, 0.7 FP, 0.6 hit (img 2), 0.5 FP
    preds = [_pred(1, [10, 10, 20, 20], 0.9), _pred(1, [70, 70, 10, 10], 0.8),
             _pred(2, [0, 0, 10, 10], 0.7), _pred(2, [50, 50, 20, 20], 0.6),
             _pred(2, [80, 0, 10, 10], 0.5)]
    froc = evaluate_boxes(_gt(), preds)["froc"]
    # at most 0 FP/img: only 0.9 -> sensitivity 0.5
    assert threshold_at_fp(froc, 0) == {"threshold": 0.9, "fp_per_image": 0.0, "sensitivity": 0.5}
    # at most 0.5 FP/img (1 FP over 2 images): 0.8 adds a FP but no sensitivity -> keep 0.9
    assert threshold_at_fp(froc, 0.5)["threshold"] == 0.9
    # at most 1 FP/img: 0.6 reaches sensitivity 1 with 2 FP over 2 images
    assert threshold_at_fp(froc, 1) == {"threshold": 0.6, "fp_per_image": 1.0, "sensitivity": 1.0}
    # plenty of FP allowed: still the highest threshold with the best sensitivity
    assert threshold_at_fp(froc, 10)["threshold"] == 0.6


def test_no_threshold_qualifies_keeps_nothing():
    froc = {"thresholds": [0.9, 0.4], "fp_per_image": [2.0, 3.0], "sensitivity": [0.5, 1.0]}
    op = threshold_at_fp(froc, 1)
    assert op["threshold"] > 0.9 and op["sensitivity"] == 0.0 and op["fp_per_image"] == 0.0
    # within budget but finding nothing: keeping nothing has fewer false positives
    froc = {"thresholds": [0.9, 0.4], "fp_per_image": [0.5, 3.0], "sensitivity": [0.0, 1.0]}
    op = threshold_at_fp(froc, 1)
    assert op["threshold"] > 0.9 and op["fp_per_image"] == 0.0
    assert threshold_at_fp(froc, 3)["threshold"] == 0.4
    assert threshold_at_fp({"thresholds": [], "fp_per_image": [], "sensitivity": []}, 1)[
        "fp_per_image"] == 0.0


def test_choose_and_resolve():
    froc = {"thresholds": [0.9, 0.5, 0.2], "fp_per_image": [0.0, 1.0, 4.0],
            "sensitivity": [0.2, 0.6, 0.9]}
    ops = choose_operating_points({"froc": froc}, {"froc": froc}, fps=(1, 5), source="hand")
    assert ops["mass"]["1"]["threshold"] == 0.5 and ops["calc"]["5"]["threshold"] == 0.2
    assert resolve_thresholds(ops, target_fp=5)["mass"] == 0.2
    assert resolve_thresholds(ops)["calc"] == 0.5  # default_fp "1"
    assert resolve_thresholds(ops, threshold=0.3)["mass"] == 0.3
    assert resolve_thresholds({}, None, None)["mass"] == 0.5  # uncalibrated bundle
    with pytest.raises(OperatingPointError, match="calibrated: 1, 5"):
        resolve_thresholds(ops, target_fp=2)
