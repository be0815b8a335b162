"""Box metrics: hand-worked FROC / AP cases and equality with pycocotools on random cases."""

from __future__ import annotations

import contextlib
import copy
import io
import time

import numpy as np
import pytest
from pycocotools import mask as mu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from common.errors import InputError
from common.metrics import evaluate_boxes
from common.metrics.froc import froc_curve, sensitivity_at_fp
from common.metrics.matching import box_iou, match_image_boxes


def _gt(images, anns, n_cat=1):
    """COCO GT from image ids and (image_id, bbox[, iscrowd]) tuples."""
    out = []
    for i, a in enumerate(anns):
        img, bbox = a[0], a[1]
        crowd = a[2] if len(a) > 2 else 0
        out.append(
            {
                "id": i + 1,
                "image_id": img,
                "category_id": 1,
                "bbox": list(bbox),
                "area": bbox[2] * bbox[3],
                "iscrowd": crowd,
            }
        )
    return {
        "images": [{"id": i, "height": 1000, "width": 1000} for i in images],
        "annotations": out,
        "categories": [{"id": c} for c in range(1, n_cat + 1)],
    }


def _p(img, bbox, score, cat=1):
    return {"image_id": img, "category_id": cat, "bbox": list(bbox), "score": score}


# ------------------------------------------------------------------------------------ FROC rules
def test_froc_hand_worked_with_tie_duplicate_hit_and_lesion_free_image():
    # img1: lesion A, img2: lesion B, img3: lesion-free (counts in FP per image: 3 images).
    gt = _gt([1, 2, 3], [(1, [10, 10, 20, 20]), (2, [50, 50, 10, 10])])
    preds = [
        _p(1, [10, 10, 20, 20], 0.9),  # hits A (IoU 1)
        _p(1, [11, 11, 20, 20], 0.8),  # hits A again (IoU 361/439 = .82): not a FP, A counted once
        _p(3, [0, 0, 5, 5], 0.7),  # FP on the lesion-free image
        _p(2, [100, 100, 10, 10], 0.6),  # FP, no overlap with B
        _p(2, [50, 50, 10, 10], 0.5),  # hits B
        _p(1, [150, 150, 10, 10], 0.5),  # FP, same score as the B hit: both enter at t = .5
    ]
    r = evaluate_boxes(gt, preds, fps=(0.5, 0.7, 1, 2))
    f = r["froc"]
    # one point per distinct score; the lowest (.5) is kept
    assert f["thresholds"] == [0.9, 0.8, 0.7, 0.6, 0.5]
    # cumulative FP: 0, 0, 1, 2, 3 -> divided by 3 images
    assert f["fp_per_image"] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    # found lesions: A from .9 on, B only at .5
    assert f["sensitivity"] == pytest.approx([0.5, 0.5, 0.5, 0.5, 1.0])
    # k=.5: best point with fp <= .5 is t=.7 (1/3) -> .5; k=.7: t=.6 (2/3) -> .5 (the tie at .5
    # brings the B hit and a FP together, so no point has sens 1 at 2/3 FP); k=1: t=.5 -> 1
    assert r["sensitivity_at_fp"] == {"0.5": 0.5, "0.7": 0.5, "1": 1.0, "2": 1.0}
    assert r["recall"] == 1.0
    assert (r["n_images"], r["n_lesions"], r["n_predictions"]) == (3, 2, 6)


def test_prediction_700px_from_the_only_lesion_is_a_false_positive():
    # The coco-froc-analysis failure: Hungarian pairing counted this pair as a hit.
    gt = _gt([1], [(1, [100, 100, 50, 50])])  # lesion centre (125, 125)
    preds = [_p(1, [800, 100, 50, 50], 0.95)]  # centre (825, 125): 700 px to the right
    for hit in ("iou", "center", "iop"):
        r = evaluate_boxes(gt, preds, hit=hit)
        assert r["recall"] == 0.0
        assert r["froc"]["fp_per_image"] == [1.0]
        assert r["froc"]["sensitivity"] == [0.0]
        assert r["sensitivity_at_fp"] == {"1": 0.0, "2": 0.0, "5": 0.0, "10": 0.0}


def test_center_rule_border_included_and_iou_rule_exact_threshold():
    gt = [[0, 0, 100, 100]]
    # centre (100, 100) on the GT border -> centre hit;
    # IoU = 40*40 / (10000 + 6400 - 1600) = .108 -> miss
    on_border = [[60, 60, 80, 80]]
    # centre (101, 101) just outside
    outside = [[61, 61, 80, 80]]
    assert match_image_boxes(on_border, [1.0], gt, hit="center").pred_hit.tolist() == [True]
    assert match_image_boxes(on_border, [1.0], gt, hit="iou").pred_hit.tolist() == [False]
    assert match_image_boxes(outside, [1.0], gt, hit="center").pred_hit.tolist() == [False]
    # centre (0, 0) on the top-left corner -> hit; centre (-0.5, 50) just left of the box -> miss
    corner = [[-40, -40, 80, 80], [-10.5, 40, 20, 20]]
    assert match_image_boxes(corner, [1, 1], gt, hit="center").pred_hit.tolist() == [True, False]
    # IoU([0,0,10,10], [0,0,10,20]) = 100 / 200 = .5 exactly -> hit at thr .5 (>=)
    assert match_image_boxes([[0, 0, 10, 20]], [1], [[0, 0, 10, 10]], thr=0.5).pred_hit[0]
    # 100 / 205 < .5 -> miss
    assert not match_image_boxes([[0, 0, 10, 20.5]], [1], [[0, 0, 10, 10]], thr=0.5).pred_hit[0]
    # iop: intersection over predicted area. [5,0,10,10] over [0,0,10,10]: 50 / 100 = .5
    m = match_image_boxes([[5, 0, 10, 10]], [1], [[0, 0, 10, 10]], hit="iop", thr=0.5)
    assert m.pred_hit[0]
    assert not match_image_boxes(
        [[6, 0, 10, 10]], [1], [[0, 0, 10, 10]], hit="iop", thr=0.5
    ).pred_hit[0]


def test_one_prediction_finds_every_lesion_it_hits_and_lesion_scores_are_max():
    # nested lesions: a centre inside both finds both; the lesion score is the best hit's score
    m = match_image_boxes(
        [[40, 40, 20, 20], [45, 45, 10, 10]],
        [0.3, 0.6],
        [[0, 0, 100, 100], [40, 40, 20, 20]],
        hit="center",
    )
    assert m.lesion_scores.tolist() == [0.6, 0.6]
    assert m.pred_hit.tolist() == [True, True]


def test_crowd_region_is_not_a_lesion_and_its_hits_are_ignored():
    gt = _gt([1], [(1, [0, 0, 10, 10]), (1, [100, 100, 50, 50], 1)])
    preds = [
        _p(1, [100, 100, 50, 50], 0.9),
        _p(1, [0, 0, 10, 10], 0.8),
        _p(1, [500, 500, 5, 5], 0.7),
    ]
    r = evaluate_boxes(gt, preds)
    assert r["n_lesions"] == 1
    # .9 hits only the crowd region: neither hit nor FP; only the .7 box is a FP
    assert r["froc"]["fp_per_image"] == [0.0, 0.0, 1.0]
    assert r["froc"]["sensitivity"] == [0.0, 1.0, 1.0]


def test_froc_weights_count_like_repeated_items():
    # a bootstrap replicate passes multiplicities: weight k must count as k copies of the item
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(40), 1)
    fp = rng.random(40) < 0.5
    lesions = np.where(rng.random(15) < 0.7, np.round(rng.random(15), 1), -np.inf)
    pw, lw = rng.integers(1, 4, 40), rng.integers(1, 4, 15)
    weighted = froc_curve(scores, fp, lesions, 7.0, pred_weights=pw, lesion_weights=lw)
    repeated = froc_curve(np.repeat(scores, pw), np.repeat(fp, pw), np.repeat(lesions, lw), 7.0)
    for key in ("thresholds", "fp_per_image", "sensitivity", "n_fp", "n_found"):
        np.testing.assert_allclose(weighted[key], repeated[key], rtol=0, atol=1e-12, err_msg=key)
    assert weighted["n_lesions"] == lw.sum()


def test_froc_curve_pure_function_and_empty_inputs():
    c = froc_curve([0.2, 0.9, 0.2], [True, False, False], [0.9, 0.2, -np.inf], n_images=2)
    assert c["thresholds"].tolist() == [0.9, 0.2]
    assert c["fp_per_image"].tolist() == [0.0, 0.5]
    assert c["sensitivity"].tolist() == pytest.approx([1 / 3, 2 / 3])
    # k smaller than the first point's FP -> 0 (keeping nothing)
    c2 = froc_curve([0.5], [True], [-np.inf], n_images=1)
    assert sensitivity_at_fp(c2, [0.5]) == {"0.5": 0.0}


def test_lesion_free_dataset_and_no_predictions():
    r = evaluate_boxes(_gt([1, 2], []), [])
    assert r["recall"] is None and r["ap50_coco"] is None and r["ap50_voc"] is None
    assert r["sensitivity_at_fp"]["1"] is None
    r = evaluate_boxes(_gt([1, 2], []), [_p(1, [0, 0, 5, 5], 0.5)])
    assert r["froc"]["fp_per_image"] == [0.5] and r["recall"] is None
    r = evaluate_boxes(_gt([1, 2], [(1, [0, 0, 10, 10])]), [])
    assert r["recall"] == 0.0 and r["ap50_coco"] == 0.0 and r["ap50_voc"] == 0.0
    assert r["froc"] == {
        "thresholds": [],
        "fp_per_image": [],
        "sensitivity": [],
        "n_fp": [],
        "n_found": [],
    }
    assert r["sensitivity_at_fp"] == {"1": 0.0, "2": 0.0, "5": 0.0, "10": 0.0}


# ------------------------------------------------------------------------------------ AP
def test_ap_hand_worked_duplicate_is_false_positive_for_ap_only():
    gt = _gt([1], [(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])])
    preds = [
        _p(1, [0, 0, 10, 10], 0.9),  # TP (A)
        _p(1, [0, 0, 10, 10], 0.8),  # duplicate of A: FP for AP, an extra hit (no FP) for FROC
        _p(1, [50, 50, 10, 10], 0.7),  # TP (B)
    ]
    r = evaluate_boxes(gt, preds)
    # recall .5, .5, 1; precision 1, .5, 2/3 -> envelope 1, 2/3, 2/3.
    # COCO: recall levels 0..0.50 (51 levels) read precision 1, 0.51..1 (50 levels) read 2/3
    assert r["ap50_coco"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101, abs=1e-12)
    # VOC all-point: .5 * 1 + .5 * 2/3
    assert r["ap50_voc"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert r["froc"]["fp_per_image"] == [0.0, 0.0, 0.0]
    assert r["froc"]["sensitivity"] == [0.5, 0.5, 1.0]


def test_ap_precision_envelope_lifts_an_early_false_positive():
    # FP first, then the two lesions: recall 0, 1/2, 1 at precision 0, 1/2, 2/3. The envelope reads
    # 2/3 at every recall level (COCO and VOC); the raw precision would give less
    gt = _gt([1], [(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])])
    preds = [_p(1, [100, 100, 10, 10], 0.9), _p(1, [0, 0, 10, 10], 0.8),
             _p(1, [50, 50, 10, 10], 0.7)]
    r = evaluate_boxes(gt, preds)
    assert r["ap50_coco"] == pytest.approx(_coco_ap50(gt, preds), abs=1e-12)
    assert r["ap50_coco"] == pytest.approx(2 / 3, abs=1e-12)
    assert r["ap50_voc"] == pytest.approx(2 / 3, abs=1e-12)


def test_box_iou_matches_pycocotools_including_crowd():
    rng = np.random.default_rng(0)
    d = np.round(rng.uniform(0, 50, (30, 4)), 1)
    g = np.round(rng.uniform(0, 50, (7, 4)), 1)
    crowd = [0, 1, 0, 0, 1, 0, 0]
    ref = mu.iou(d.tolist(), g.tolist(), crowd)
    assert np.array_equal(box_iou(d, g, np.array(crowd, bool)), ref)


def _coco_ap50(gt, preds):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(gt)
        c.createIndex()
        d = c.loadRes(copy.deepcopy(preds))
        e = COCOeval(c, d, "bbox")
        e.evaluate()
        e.accumulate()
    p = e.eval["precision"][
        0, :, :, 0, 2
    ]  # IoU .5, all recall levels, all categories, area all, 100
    return float(np.mean(p[p > -1])) if (p > -1).any() else None


def _random_case(rng):
    """Random COCO case: 1-6 images with unsorted ids, 1-2 categories, crowd GT, images without GT
    or predictions, scores on a 0.1 grid (ties), exact duplicates, sometimes > 100 predictions per
    image."""
    n_img, n_cat = int(rng.integers(1, 7)), int(rng.integers(1, 3))
    ids = [int(i) for i in rng.choice(np.arange(1, 60), n_img, replace=False)]
    anns = []
    for im in ids:
        for _ in range(int(rng.integers(0, 5))):
            b = [
                float(v) for v in np.round(np.r_[rng.uniform(0, 150, 2), rng.uniform(5, 60, 2)], 1)
            ]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im,
                    "category_id": int(rng.integers(1, n_cat + 1)),
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": int(rng.random() < 0.1),
                }
            )
    rng.shuffle(anns)
    preds = []
    for im in ids:
        g = [a for a in anns if a["image_id"] == im]
        n = int(rng.integers(101, 160)) if rng.random() < 0.1 else int(rng.integers(0, 40))
        for _ in range(n):
            if g and rng.random() < 0.7:  # near a GT box
                b = np.array(g[rng.integers(len(g))]["bbox"]) + rng.normal(0, 4, 4)
                b[2:] = np.abs(b[2:]) + 1
            else:
                b = np.r_[rng.uniform(0, 150, 2), rng.uniform(5, 60, 2)]
            preds.append(
                _p(
                    im,
                    [float(v) for v in np.round(b, 1)],
                    float(np.round(rng.random(), 1)),
                    int(rng.integers(1, n_cat + 1)),
                )
            )
            if rng.random() < 0.1:
                preds.append(dict(preds[-1]))
    rng.shuffle(preds)
    gt = {
        "images": [{"id": i, "height": 200, "width": 200} for i in ids],
        "annotations": anns,
        "categories": [{"id": c} for c in range(1, n_cat + 1)],
    }
    return gt, preds


def test_ap50_coco_equals_pycocotools_on_random_cases():
    checked, nontrivial = 0, 0
    for seed in range(200):
        gt, preds = _random_case(np.random.default_rng(seed))
        if not preds:  # pycocotools' loadRes cannot load an empty result list
            continue
        ref = _coco_ap50(gt, preds)
        ours = evaluate_boxes(gt, preds)["ap50_coco"]
        assert (ref is None) == (ours is None), seed
        if ref is not None:
            assert ours == pytest.approx(ref, abs=1e-12), seed
            nontrivial += 0 < ref < 1
        checked += 1
    assert checked > 150 and nontrivial > 100


def test_ap50_coco_tie_order_truncation_and_crowd_match_pycocotools():
    # equal scores within an image: the results-list order decides (stable sort). FP first -> the
    # precision at recall 1 is 1/2 (AP .5); TP first -> 1 (AP 1)
    gt = _gt([1], [(1, [0, 0, 10, 10])])
    a = [_p(1, [50, 50, 5, 5], 0.5), _p(1, [0, 0, 10, 10], 0.5)]
    b = a[::-1]
    ra, rb = evaluate_boxes(gt, a)["ap50_coco"], evaluate_boxes(gt, b)["ap50_coco"]
    assert ra == pytest.approx(_coco_ap50(gt, a), abs=1e-12) and ra == pytest.approx(0.5)
    assert rb == pytest.approx(_coco_ap50(gt, b), abs=1e-12) and rb == pytest.approx(1.0)
    # > 100 predictions on one image: only the best 100 count (the TP is ranked 101st)
    preds = [_p(1, [200 + i, 200, 5, 5], 0.9) for i in range(100)] + [_p(1, [0, 0, 10, 10], 0.1)]
    gt1 = _gt([1], [(1, [0, 0, 10, 10])])
    r = evaluate_boxes(gt1, preds)
    assert r["ap50_coco"] == _coco_ap50(gt1, preds) == 0.0
    assert r["ap50_voc"] == pytest.approx(1 / 101) and r["recall"] == 1.0
    # crowd: predictions matching a crowd region are ignored, several may match it
    gtc = _gt([1], [(1, [0, 0, 10, 10]), (1, [20, 20, 40, 40], 1)])
    pc = [_p(1, [20, 20, 10, 10], 0.9), _p(1, [30, 30, 10, 10], 0.8), _p(1, [0, 0, 10, 10], 0.7)]
    assert evaluate_boxes(gtc, pc)["ap50_coco"] == pytest.approx(_coco_ap50(gtc, pc), abs=1e-12)
    assert evaluate_boxes(gtc, pc)["ap50_coco"] == pytest.approx(1.0)


def test_ap_tied_iou_takes_the_last_gt_like_pycocotools():
    # the first prediction overlaps A and B equally (IoU 9/11 each); pycocotools keeps the last GT
    # of equal IoU (B), which leaves A to the second prediction (IoU 7/13 with A, 1/3 with B): two
    # true positives, AP 1. Taking the first GT (A) instead would make the second prediction a false
    # positive: recall 1/2 at precision 1, COCO AP 51/101 = 0.505
    gt = _gt([1], [(1, [10, 0, 10, 10]), (1, [12, 0, 10, 10])])
    preds = [_p(1, [11, 0, 10, 10], 0.9), _p(1, [7, 0, 10, 10], 0.8)]
    ious = box_iou([p["bbox"] for p in preds], [a["bbox"] for a in gt["annotations"]])
    assert ious[0, 0] == ious[0, 1] and ious[1, 0] >= 0.5 > ious[1, 1]
    r = evaluate_boxes(gt, preds)
    assert _coco_ap50(gt, preds) == pytest.approx(1.0)
    assert r["ap50_coco"] == pytest.approx(1.0, abs=1e-12)
    assert r["ap50_voc"] == pytest.approx(1.0, abs=1e-12)


def test_ap_iou_of_exactly_one_half_is_a_match():
    # [0, 0, 10, 5] against [0, 0, 10, 10]: IoU 50 / 100 = 0.5 exactly, a true positive
    gt = _gt([1], [(1, [0, 0, 10, 10])])
    preds = [_p(1, [0, 0, 10, 5], 0.9)]
    assert box_iou([preds[0]["bbox"]], [[0, 0, 10, 10]])[0, 0] == 0.5
    r = evaluate_boxes(gt, preds)
    assert r["ap50_coco"] == pytest.approx(_coco_ap50(gt, preds), abs=1e-12)
    assert r["ap50_coco"] == pytest.approx(1.0) and r["ap50_voc"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------- errors, bootstrap
@pytest.mark.parametrize(
    "pred, msg",
    [
        (_p(7, [0, 0, 1, 1], 0.5), "unknown image_id 7"),
        (_p(1, [0, 0, -1, 1], 0.5), "bad bbox"),
        (_p(1, [0, 0, 1], 0.5), "bad bbox"),
        (_p(1, [0, 0, 1, float("nan")], 0.5), "bad bbox"),
        (_p(1, [0, 0, 1, 1], float("nan")), "score is nan"),
        (_p(1, [0, 0, 1, 1], 0.5, cat=3), "category_id 3"),
    ],
)
def test_bad_predictions_raise_input_error(pred, msg):
    with pytest.raises(InputError, match=msg) as e:
        evaluate_boxes(_gt([1], [(1, [0, 0, 10, 10])]), [_p(1, [0, 0, 1, 1], 0.3), pred])
    assert "\n" not in str(e.value)


def test_missing_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        evaluate_boxes(tmp_path / "nope.json", [])
    with pytest.raises(InputError, match="file not found"):
        evaluate_boxes(_gt([1], []), tmp_path / "pred.json")


def test_bootstrap_is_deterministic_and_degenerate_data_gives_point_intervals():
    # four identical images: 1 lesion hit at .9, 1 FP at .5 -> every replicate: recall 1,
    # sens@1 = 1, sens@0.5 = 1 (t=.9 has 0 FP)
    gt = _gt([1, 2, 3, 4], [(i, [0, 0, 10, 10]) for i in (1, 2, 3, 4)])
    for im in gt["images"]:
        im["patient_id"] = f"p{(im['id'] + 1) // 2}"
    preds = [_p(i, [0, 0, 10, 10], 0.9) for i in (1, 2, 3, 4)]
    preds += [_p(i, [50, 50, 10, 10], 0.5) for i in (1, 2, 3, 4)]
    r = evaluate_boxes(gt, preds, bootstrap=50, seed=3, fps=(0.5, 1))
    assert r["bootstrap"]["unit"] == "patient"
    assert r["bootstrap"]["recall"] == [1.0, 1.0]
    assert r["bootstrap"]["sensitivity_at_fp"] == {"0.5": [1.0, 1.0], "1": [1.0, 1.0]}
    # varied data: intervals are ordered, within [0, 1], and reproducible with the same seed
    gt2, preds2 = _random_case(np.random.default_rng(5))
    b1 = evaluate_boxes(gt2, preds2, bootstrap=100, seed=1)["bootstrap"]
    b2 = evaluate_boxes(gt2, preds2, bootstrap=100, seed=1)["bootstrap"]
    assert b1 == b2 and b1["unit"] == "image"
    lo, hi = b1["recall"]
    assert 0 <= lo <= hi <= 1


def test_thousands_of_predictions_are_fast():
    rng = np.random.default_rng(0)
    gt = _gt(
        list(range(1, 11)), [(i, [100 * j, 100, 60, 60]) for i in range(1, 11) for j in range(5)]
    )
    preds = []
    for i in range(1, 11):
        xy = rng.uniform(0, 900, (3000, 2))
        preds += [_p(i, [x, y, 40, 40], float(s)) for (x, y), s in zip(xy, rng.random(3000))]
    t0 = time.perf_counter()
    r = evaluate_boxes(gt, preds)
    assert time.perf_counter() - t0 < 5.0
    assert len(r["froc"]["thresholds"]) == len({p["score"] for p in preds})


def _naive_froc(gt, preds, thr=0.5):
    """Independent brute force: at every distinct score, re-evaluate from scratch with loops."""

    def iou(a, b):
        iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
        ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)

    lesions = [(a["image_id"], a["bbox"]) for a in gt["annotations"]]
    fppi, sens = [], []
    for t in sorted({p["score"] for p in preds}, reverse=True):
        kept = [p for p in preds if p["score"] >= t]
        found, n_fp = set(), 0
        for p in kept:
            hit = [
                i
                for i, (im, b) in enumerate(lesions)
                if im == p["image_id"] and iou(p["bbox"], b) >= thr
            ]
            found.update(hit)
            n_fp += not hit
        fppi.append(n_fp / len(gt["images"]))
        sens.append(len(found) / len(lesions))
    return fppi, sens


def test_froc_equals_brute_force_on_random_cases():
    for seed in range(40):
        gt, preds = _random_case(np.random.default_rng(100 + seed))
        for a in gt["annotations"]:
            a["iscrowd"] = 0
        if not gt["annotations"]:
            continue
        r = evaluate_boxes(gt, preds, fps=(0.5, 1, 3))
        fppi, sens = _naive_froc(gt, preds)
        assert r["froc"]["fp_per_image"] == pytest.approx(fppi, abs=1e-12)
        assert r["froc"]["sensitivity"] == pytest.approx(sens, abs=1e-12)
        for k in (0.5, 1, 3):
            best = max([s for f, s in zip(fppi, sens) if f <= k], default=0.0)
            assert r["sensitivity_at_fp"][str(k)] == pytest.approx(best, abs=1e-12)


def test_ap50_voc_equals_independent_greedy_implementation():
    """Plain-loop VOC2010+ AP (pooled greedy matching: best-IoU free GT >= .5, duplicates FP;
    all-point area under the precision envelope as a sum of rectangles), continuous scores, one
    category."""

    def iou(a, b):
        iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
        ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        return 0.0 if iw <= 0 or ih <= 0 else iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)

    checked = 0
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        gt, preds = _random_case(rng)
        for a in gt["annotations"]:
            a["iscrowd"], a["category_id"] = 0, 1
        gt["categories"] = [{"id": 1}]
        for p in preds:
            p["category_id"], p["score"] = 1, float(rng.random())  # no ties
        if not gt["annotations"]:
            continue
        taken, tp = set(), []
        for p in sorted(preds, key=lambda p: -p["score"]):
            cands = [
                (iou(p["bbox"], a["bbox"]), a["id"])
                for a in gt["annotations"]
                if a["image_id"] == p["image_id"] and a["id"] not in taken
            ]
            best = max(cands, default=(0.0, None))
            if best[0] >= 0.5:
                taken.add(best[1])
            tp.append(best[0] >= 0.5)
        n_gt, ap, prev_rec = len(gt["annotations"]), 0.0, 0.0
        rec = np.cumsum(tp) / n_gt
        prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        for i in range(len(tp)):
            if rec[i] > prev_rec:  # each recall step is weighted by the best precision at >= recall
                ap += (rec[i] - prev_rec) * max(prec[i:])
                prev_rec = rec[i]
        assert evaluate_boxes(gt, preds)["ap50_voc"] == pytest.approx(ap, abs=1e-12), seed
        checked += 1
    assert checked > 40
