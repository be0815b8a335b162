"""Mask metrics: the paper's IoP rule, 8-connectivity, per-type FROC, FP per cm^2, input errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from common.errors import InputError
from common.metrics import evaluate_masks, match_image_masks


def _blank(h=64, w=64):
    return np.zeros((h, w), bool), np.zeros((h, w), np.float32)


def test_big_gt_region_with_many_small_predictions_counts_once():
    gt, prob = _blank()
    gt[10:50, 10:50] = True  # one large annotated region
    for i, (r, c) in enumerate([(12, 12), (12, 30), (30, 12), (30, 30), (45, 45)]):
        prob[r : r + 2, c : c + 2] = 0.6 + 0.05 * i  # five separate 2x2 blobs, all inside
    m = match_image_masks(gt, prob)
    assert m.pred_hit.tolist() == [True] * 5  # IoP 1 each
    assert m.lesion_scores.tolist() == [pytest.approx(0.8)]  # best of the five, one lesion
    r = evaluate_masks({"a": gt}, {"a": prob})
    assert r["n_lesions"] == 1 and r["n_predictions"] == 5
    assert r["n_true_positive_predictions"] == 5
    # no FP anywhere; the lesion is found from the highest threshold on
    assert r["froc"]["fp_per_image"] == [0.0] * 5
    assert r["froc"]["sensitivity"] == [1.0] * 5
    assert r["recall"] == 1.0


def test_iop_threshold_half_outside_prediction_is_false_positive():
    gt, _ = _blank()
    gt[10:20, 10:20] = True
    # 4x5 = 20 px blob, only column 19 (4 px) inside: IoP = 4/20 = .2 < .25 -> FP, lesion not found
    prob = np.zeros(gt.shape, np.float32)
    prob[12:16, 19:24] = 0.9
    m = match_image_masks(gt, prob)
    assert m.extras["pred_iop"].tolist() == [pytest.approx(0.2)]
    assert m.pred_hit.tolist() == [False] and m.lesion_scores.tolist() == [-np.inf]
    # 4x4 = 16 px, column 19 inside: IoP = 4/16 = .25 exactly -> TP (>=)
    prob2 = np.zeros(gt.shape, np.float32)
    prob2[12:16, 19:23] = 0.9
    assert match_image_masks(gt, prob2).pred_hit.tolist() == [True]
    assert match_image_masks(gt, prob2, iop_thr=0.26).pred_hit.tolist() == [False]


def test_eight_connectivity_binarize_and_max_score():
    gt, prob = _blank()
    gt[5, 5] = gt[6, 6] = True  # diagonal neighbours: one GT lesion
    prob[5, 5], prob[6, 6] = 0.7, 0.95  # diagonal: one predicted lesion scored .95
    prob[30, 30] = 0.49  # below binarize .5: not a prediction
    prob[40, 40] = 0.5  # exactly at binarize: a prediction (>=), a FP
    m = match_image_masks(gt, prob)
    assert len(m.lesion_scores) == 1 and len(m.pred_scores) == 2
    assert sorted(m.pred_scores.tolist()) == [0.5, pytest.approx(0.95)]
    assert m.pred_fp.sum() == 1
    # a higher binarization threshold removes the .5 component and keeps only the .95 pixel
    assert len(match_image_masks(gt, prob, binarize=0.8).pred_scores) == 1


def test_true_positive_overlapping_two_lesions_finds_both():
    gt, prob = _blank()
    gt[10:14, 10:14] = True
    gt[10:14, 16:20] = True  # second lesion, separated by two background columns
    prob[11:13, 12:18] = 0.9  # 12 px: 4 + 4 on the lesions -> IoP 8/12 >= .25
    m = match_image_masks(gt, prob)
    assert m.lesion_scores.tolist() == [pytest.approx(0.9)] * 2


def test_per_type_sensitivity_with_overall_fp_axis_and_lesion_free_image():
    gt, prob = _blank()
    gt[5:7, 5:7] = True  # dot
    gt[20:22, 5:40] = True  # vessel
    gt[40:60, 40:60] = True  # large
    prob[5:7, 5:7] = 0.9  # finds the dot
    prob[50:52, 50:52] = 0.6  # finds the large region
    prob[30, 50] = 0.8  # FP
    types = {
        "a": [
            {"type": "dot", "point": [5, 5]},  # [x, y]
            {"type": "vessel", "point": [30, 21]},
            {"type": "large", "point": [45, 55]},
        ]
    }
    empty_gt, empty_prob = _blank()
    r = evaluate_masks(
        {"a": gt, "free": empty_gt}, {"a": prob, "free": empty_prob}, types=types, fps=(0.4, 1)
    )
    # thresholds .9 .8 .6; FP 0, 1, 1 over 2 images (the lesion-free one counts)
    assert r["froc"]["thresholds"] == [pytest.approx(0.9), pytest.approx(0.8), pytest.approx(0.6)]
    assert r["froc"]["fp_per_image"] == [0.0, 0.5, 0.5]
    assert r["froc"]["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    pt = r["per_type"]
    # same FP axis for every type; sensitivity over that type's lesions only
    assert pt["dot"]["froc"]["fp_per_image"] == r["froc"]["fp_per_image"]
    assert pt["dot"]["froc"]["sensitivity"] == [1.0, 1.0, 1.0]
    assert pt["vessel"]["froc"]["sensitivity"] == [0.0, 0.0, 0.0]
    assert pt["large"]["froc"]["sensitivity"] == [0.0, 0.0, 1.0]
    # k=.4: only t=.9 qualifies (FP 0) -> large 0, dot 1; k=1: t=.6 -> large 1
    assert pt["large"]["sensitivity_at_fp"] == {"0.4": 0.0, "1": 1.0}
    assert pt["dot"]["sensitivity_at_fp"] == {"0.4": 1.0, "1": 1.0}
    assert pt["vessel"]["recall"] == 0.0 and pt["large"]["recall"] == 1.0
    assert r["sensitivity_at_fp"] == {"0.4": pytest.approx(1 / 3), "1": pytest.approx(2 / 3)}
    assert r["n_untyped"] == 0


def test_types_from_canonical_calcifications_json_and_fp_per_cm2():
    gt, prob = _blank(100, 100)
    gt[10:12, 10:12] = True
    gt[50:60, 50:60] = True
    prob[10:12, 10:12] = 0.9
    prob[80:82, 80:82] = 0.7  # FP
    canonical = {
        "images": [
            {
                "id": 3,
                "stem": "s1",
                "height": 100,
                "width": 100,
                "pixel_spacing": [0.1, 0.1],
                "patient_id": "p1",
            },
            {
                "id": 4,
                "stem": "s2",
                "height": 100,
                "width": 100,
                "pixel_spacing": [0.1, 0.1],
                "patient_id": "p2",
            },
        ],
        "annotations": [
            {"id": 1, "image_id": 3, "calc_type": "dot", "point": [10, 11], "bbox": [10, 10, 2, 2]},
            {
                "id": 2,
                "image_id": 3,
                "calc_type": "large",
                "point": [55, 55],
                "bbox": [50, 50, 10, 10],
            },
        ],
        "categories": [{"id": 1, "name": "calcification"}],
    }
    e, ep = _blank(100, 100)
    r = evaluate_masks({"s1": gt, "s2": e}, {"s1": prob, "s2": ep}, types=canonical, bootstrap=20)
    assert r["per_type"]["dot"]["recall"] == 1.0 and r["per_type"]["large"]["recall"] == 0.0
    assert r["per_type"]["vessel"]["n_lesions"] == 0 and r["per_type"]["vessel"]["recall"] is None
    # 100 x 100 px at 0.1 mm = 1 cm^2 per image -> 2 cm^2, 1 FP
    assert r["area_cm2"] == pytest.approx(2.0)
    assert r["fp_per_cm2"] == pytest.approx(0.5)
    assert r["froc"]["fp_per_cm2"] == pytest.approx([0.0, 0.5])
    assert r["bootstrap"]["unit"] == "patient"
    # the dot is always found when its image is drawn; no replicate can find the large region
    assert r["bootstrap"]["per_type"]["dot"]["recall"] == [1.0, 1.0]
    assert r["bootstrap"]["per_type"]["large"]["recall"] == [0.0, 0.0]
    assert r["bootstrap"]["per_type"]["vessel"]["recall"] == [None, None]
    # an explicit isotropic spacing overrides: 0.2 mm -> 4 cm^2 per image
    r2 = evaluate_masks({"s1": gt, "s2": e}, {"s1": prob, "s2": ep}, pixel_spacing=0.2)
    assert r2["fp_per_cm2"] == pytest.approx(1 / 8)
    assert "fp_per_cm2" not in evaluate_masks({"s1": gt}, {"s1": prob})


def test_first_listed_type_point_of_a_component_wins():
    gt, prob = _blank()
    gt[10:20, 10:20] = True
    gt[40:42, 40:42] = True
    points = [
        {"type": "large", "point": [12, 12]},
        {"type": "dot", "point": [18, 18]},  # same component: the first point keeps it
        {"type": "vessel", "point": [30, 30]},  # on no component: ignored
        {"type": "dot", "point": [41, 40]},
    ]
    m = match_image_masks(gt, prob, type_points=points)
    assert m.lesion_types.tolist() == ["large", "dot"]
    m = match_image_masks(gt, prob, type_points=points[1:])
    assert m.lesion_types.tolist() == ["dot", "dot"]


def test_no_predictions_and_lesion_free_images():
    gt, prob = _blank()
    gt[1:3, 1:3] = True
    r = evaluate_masks({"a": gt, "b": np.zeros_like(gt)}, {"a": prob, "b": prob})
    assert r["recall"] == 0.0 and r["froc"]["thresholds"] == []
    assert r["sensitivity_at_fp"] == {"1": 0.0, "2": 0.0, "5": 0.0, "10": 0.0}
    p = prob.copy()
    p[30, 30] = 0.9
    r = evaluate_masks({"b": np.zeros_like(gt)}, {"b": p})
    assert r["recall"] is None and r["froc"]["fp_per_image"] == [1.0]


def test_missing_prediction_policy():
    gt, prob = _blank()
    gt[1:3, 1:3] = True
    with pytest.raises(InputError, match="b: no probability map"):
        evaluate_masks({"a": gt, "b": gt}, {"a": prob})
    r = evaluate_masks({"a": gt, "b": gt}, {"a": prob}, missing="empty")
    assert r["n_images"] == 2 and r["n_lesions"] == 2 and r["recall"] == 0.0


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((64, 63), np.float32), "63x64 \\(WxH\\) but the GT a is 64x64"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.full((64, 64), 1.5, np.float32), "outside \\[0, 1\\]"),
        (np.zeros((64, 64), np.uint8), "must be float"),
    ],
)
def test_bad_probability_maps_raise_input_error(bad, msg):
    gt, _ = _blank()
    with pytest.raises(InputError, match=msg):
        evaluate_masks({"a": gt}, {"a": bad})


def test_prediction_without_gt_and_type_point_outside_image_raise():
    gt, prob = _blank()
    with pytest.raises(InputError, match="zzz: prediction for an image without GT"):
        evaluate_masks({"a": gt}, {"a": prob, "zzz": prob})
    with pytest.raises(InputError, match="outside"):
        evaluate_masks({"a": gt}, {"a": prob}, types={"a": [{"type": "dot", "point": [64, 0]}]})


@pytest.mark.parametrize(
    "types, msg",
    [
        ({"a": [{"type": "dot"}]}, r"types: a\[0\]: expected"),
        ({"a": [{"type": "dot", "point": [1, "x"]}]}, r"types: a\[0\]: expected"),
        ({"a": [{"type": "dot", "point": [float("nan"), 1]}]}, r"types: a\[0\]: expected"),
        ({"a": {"type": "dot"}}, "types: a: expected a list"),
        (
            {"images": [{"id": 1, "stem": "a"}], "annotations": [
                {"image_id": 2, "calc_type": "dot", "point": [1, 1]}], "categories": []},
            r"types: annotations\[0\]: unknown image_id 2",
        ),
    ],
)
def test_bad_types_input_names_the_types_source(types, msg):
    gt, prob = _blank()
    with pytest.raises(InputError, match=msg):
        evaluate_masks({"a": gt}, {"a": prob}, types=types)


def test_large_image_with_thousands_of_components_is_fast():
    rng = np.random.default_rng(0)
    h, w = 2048, 1600
    prob = np.zeros((h, w), np.float32)
    prob[::8, ::8] = rng.uniform(0.5, 1.0, prob[::8, ::8].shape)  # ~51k isolated components
    gt = np.zeros((h, w), bool)
    gt[100:400, 100:400] = True
    t0 = time.perf_counter()
    r = evaluate_masks({"a": gt}, {"a": prob})
    assert time.perf_counter() - t0 < 10.0
    assert r["n_predictions"] == (h // 8) * (w // 8)
    # grid points inside rows/cols 100..399: 104, 112, ..., 392 -> 37 per axis
    assert r["n_true_positive_predictions"] == 37 * 37
    assert r["recall"] == 1.0
