"""End-to-end tests of ``python -m common.evaluate`` with files in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.evaluate import main
from common.io import atomic_write_json, atomic_write_png, read_png

REPO = Path(__file__).resolve().parents[2]


def _boxes_files(tmp_path):
    gt = {
        "images": [
            {"id": i, "height": 300, "width": 300, "patient_id": f"p{i}"} for i in (1, 2, 3)
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 1,
                "bbox": [50, 50, 10, 10],
                "area": 100,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "mass"}],
    }
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # hit A
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.7},  # FP (lesion-free)
        {
            "image_id": 2,
            "category_id": 1,
            "bbox": [52, 52, 10, 10],
            "score": 0.6,
        },  # IoU 64/136 < .5
    ]
    atomic_write_json(tmp_path / "gt.json", gt)
    atomic_write_json(tmp_path / "pred.json", preds)
    return tmp_path / "gt.json", tmp_path / "pred.json"


def test_boxes_cli_report_and_plot(tmp_path):
    gt, pred = _boxes_files(tmp_path)
    out, png = tmp_path / "r" / "REPORT.json", tmp_path / "froc.png"
    args = ["boxes", "--gt", str(gt), "--pred", str(pred), "--out", str(out), "--plot", str(png)]
    assert main(args + ["--fps", "0.5,1", "--bootstrap", "20", "--seed", "1"]) == 0
    r = json.loads(out.read_text())
    # iou rule: A hit at .9; the .6 box has IoU 8*8/(100+100-64) = .47 with B -> FP
    assert r["froc"]["thresholds"] == [0.9, 0.7, 0.6]
    assert r["froc"]["fp_per_image"] == pytest.approx([0, 1 / 3, 2 / 3])
    assert r["froc"]["sensitivity"] == [0.5, 0.5, 0.5]
    assert r["sensitivity_at_fp"] == {"0.5": 0.5, "1": 0.5}
    assert r["recall"] == 0.5
    # AP: TP, FP, FP over 2 GT -> recall .5 at precision 1; levels 0..0.50 (51 of 101) read 1
    assert r["ap50_coco"] == pytest.approx(51 / 101, abs=1e-12)
    assert r["ap50_voc"] == pytest.approx(0.5)
    assert r["bootstrap"]["n"] == 20 and r["bootstrap"]["unit"] == "patient"
    img = read_png(png)
    assert img.ndim == 3 and img.shape[0] > 100
    # the centre rule finds B too: centre (57, 57) is inside [50, 60]
    assert main(args + ["--hit", "center"]) == 0
    r = json.loads(out.read_text())
    assert r["froc"]["sensitivity"] == [0.5, 0.5, 1.0]
    assert r["froc"]["fp_per_image"] == pytest.approx([0, 1 / 3, 1 / 3])


def test_boxes_cli_input_errors_exit_2_with_one_line(tmp_path, capsys):
    gt, pred = _boxes_files(tmp_path)
    bad = tmp_path / "bad.json"
    atomic_write_json(bad, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    out = tmp_path / "REPORT.json"
    assert main(["boxes", "--gt", str(gt), "--pred", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: [0]: unknown image_id 99"
    assert not out.exists()
    missing = tmp_path / "nope.json"
    assert main(["boxes", "--gt", str(missing), "--pred", str(pred), "--out", str(out)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
    # the real entry point: exit status 2 and a one-line message on stderr
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.evaluate",
            "boxes",
            "--gt",
            str(gt),
            "--pred",
            str(bad),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {bad}: [0]: unknown image_id 99"]


def _masks_files(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    a = np.zeros((40, 50), np.uint8)
    a[10:20, 10:20] = 255  # lesion of image a
    b = np.zeros((40, 50), np.uint8)
    b[30:38, 30:38] = 255  # lesion of image b
    c = np.zeros((40, 50), np.uint8)  # lesion-free image c
    for stem, m in (("a", a), ("b", b), ("c", c)):
        atomic_write_png(gt_dir / f"{stem}.png", m)
    pa = np.zeros((40, 50), np.uint16)
    pa[12:15, 12:15] = 58982  # 16-bit: 58982 / 65535 = .90001, inside lesion a -> TP
    pb = np.zeros((40, 50), np.uint8)
    pb[2:5, 2:5] = 204  # 8-bit: 204 / 255 = .8, far from lesion b -> FP
    pc = np.zeros((40, 50), np.float32)
    pc[20:22, 20:22] = 0.7  # .npy: FP on the lesion-free image
    atomic_write_png(pred_dir / "a.png", pa)
    atomic_write_png(pred_dir / "b.png", pb)
    np.save(pred_dir / "c.npy", pc)
    types = tmp_path / "types.json"
    atomic_write_json(
        types,
        {"a": [{"type": "dot", "point": [15, 15]}], "b": [{"type": "large", "point": [33, 33]}]},
    )
    return gt_dir, pred_dir, types


def test_masks_cli_report_per_type_and_plot(tmp_path):
    gt_dir, pred_dir, types = _masks_files(tmp_path)
    out, png = tmp_path / "REPORT.json", tmp_path / "froc.png"
    rc = main(
        [
            "masks",
            "--gt-dir",
            str(gt_dir),
            "--pred-dir",
            str(pred_dir),
            "--types",
            str(types),
            "--out",
            str(out),
            "--plot",
            str(png),
            "--pixel-spacing",
            "0.1",
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    # thresholds .9 (a, TP), .8 (b, FP), .7 (c, FP); 3 images
    assert r["froc"]["thresholds"] == pytest.approx([58982 / 65535, 0.8, 0.7], abs=1e-6)
    assert r["froc"]["fp_per_image"] == pytest.approx([0, 1 / 3, 2 / 3])
    assert r["froc"]["sensitivity"] == [0.5, 0.5, 0.5]
    assert r["recall"] == 0.5 and r["n_images"] == 3 and r["n_lesions"] == 2
    assert r["per_type"]["dot"]["recall"] == 1.0 and r["per_type"]["large"]["recall"] == 0.0
    # 3 images of 40 x 50 px at 0.1 mm: 3 * 0.2 cm^2; 2 FP
    assert r["area_cm2"] == pytest.approx(0.6) and r["fp_per_cm2"] == pytest.approx(2 / 0.6)
    assert read_png(png).ndim == 3


def test_masks_cli_missing_prediction_size_mismatch_and_nan(tmp_path, capsys):
    gt_dir, pred_dir, _ = _masks_files(tmp_path)
    out = tmp_path / "REPORT.json"
    base = ["masks", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir), "--out", str(out)]
    (pred_dir / "c.npy").unlink()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "c.png" in err and "no prediction" in err and "--missing-as-empty" in err
    # the documented alternative: the image counts with no prediction
    assert main(base + ["--missing-as-empty"]) == 0
    r = json.loads(out.read_text())
    assert r["n_images"] == 3 and r["froc"]["fp_per_image"] == pytest.approx([0, 1 / 3])
    np.save(pred_dir / "c.npy", np.zeros((41, 50), np.float32))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert str(pred_dir / "c.npy") in err and str(gt_dir / "c.png") in err and "50x41" in err
    nan = np.zeros((40, 50), np.float32)
    nan[0, 0] = np.nan
    np.save(pred_dir / "c.npy", nan)
    assert main(base) == 2
    assert f"{pred_dir / 'c.npy'}: probability map contains NaN" in capsys.readouterr().err
    np.save(pred_dir / "zzz.npy", np.zeros((40, 50), np.float32))
    (pred_dir / "c.npy").unlink()
    assert main(base + ["--missing-as-empty"]) == 2
    assert "zzz.npy: prediction for an image without GT" in capsys.readouterr().err


def test_masks_cli_canonical_json_with_split_and_lesion_free_image(tmp_path):
    root = tmp_path / "canon"
    m = np.zeros((30, 30), np.uint8)
    m[5:8, 5:8] = 255
    atomic_write_png(root / "calc_masks" / "s1.png", m)
    coco = {
        "images": [
            {
                "id": 1,
                "stem": "s1",
                "height": 30,
                "width": 30,
                "split": "test",
                "patient_id": "p1",
                "pixel_spacing": [0.1, 0.1],
                "mask_file": "calc_masks/s1.png",
            },
            {
                "id": 2,
                "stem": "s2",
                "height": 30,
                "width": 30,
                "split": "test",
                "patient_id": "p2",
                "pixel_spacing": [0.1, 0.1],
                "mask_file": None,
            },
            {
                "id": 3,
                "stem": "s3",
                "height": 30,
                "width": 30,
                "split": "train",
                "patient_id": "p3",
                "pixel_spacing": [0.1, 0.1],
                "mask_file": None,
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [5, 5, 3, 3],
                "area": 9,
                "calc_type": "dot",
                "point": [6, 6],
            }
        ],
        "categories": [{"id": 1, "name": "calcification"}],
    }
    atomic_write_json(root / "calcifications.json", coco)
    pred = tmp_path / "pred"
    p1 = np.zeros((30, 30), np.float32)
    p1[6, 6] = 0.8
    p2 = np.zeros((30, 30), np.float32)
    p2[20, 20] = 0.6
    pred.mkdir()
    np.save(pred / "s1.npy", p1)
    np.save(pred / "s2.npy", p2)
    np.save(pred / "s3.npy", p2)  # another split's prediction in the same folder: not evaluated
    out = tmp_path / "REPORT.json"
    rc = main(
        [
            "masks",
            "--gt-json",
            str(root / "calcifications.json"),
            "--split",
            "test",
            "--pred-dir",
            str(pred),
            "--out",
            str(out),
            "--bootstrap",
            "10",
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["n_images"] == 2 and r["recall"] == 1.0
    assert r["froc"]["fp_per_image"] == [0.0, 0.5]
    assert r["per_type"]["dot"]["recall"] == 1.0
    assert r["area_cm2"] == pytest.approx(2 * 0.09)
    assert r["bootstrap"]["unit"] == "patient"


def test_masks_cli_processed_labels_by_default_raw_on_request(tmp_path):
    """A model trained on the processed labels predicts a disc of the minimum area over a small dot:
    a hit against the processed labels (the default), a false positive against the raw mask."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt = np.zeros((120, 120), np.uint8)
    gt[59:62, 59:62] = 255  # a 3 x 3 px dot
    atomic_write_png(gt_dir / "a.png", gt)
    yy, xx = np.mgrid[:120, :120]
    prob = (((yy - 60) ** 2 + (xx - 60) ** 2) <= 17**2).astype(np.float32) * 0.9  # ~900 px disc
    pred_dir.mkdir()
    np.save(pred_dir / "a.npy", prob)
    base = ["masks", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir),
            "--pixel-spacing", "0.085"]
    out = tmp_path / "processed.json"
    assert main([*base, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["gt_labels"] == "processed" and r["min_area_px"] == [900, 900]
    assert r["recall"] == 1.0 and r["n_lesions"] == 1
    out_raw = tmp_path / "raw.json"
    assert main([*base, "--gt-labels", "raw", "--out", str(out_raw)]) == 0
    raw = json.loads(out_raw.read_text())
    assert raw["gt_labels"] == "raw" and "min_area_px" not in raw
    assert raw["recall"] == 0.0 and raw["froc"]["fp_per_image"] == [1.0]
    # without a spacing the pixel fallback applies; a tiny minimum area leaves the dot a miss
    out_px = tmp_path / "px.json"
    assert main(["masks", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir),
                 "--min-area-px", "20", "--out", str(out_px)]) == 0
    px = json.loads(out_px.read_text())
    assert px["min_area_px"] == [20, 20] and px["recall"] == 0.0


def _prediction_folder(tmp_path):
    """A canonical masses.json whose ids 1 and 2 are other images than a deeplima prediction
    folder's ids 1 and 2 (its images.json numbers the predicted images 1..N)."""
    def img(i, stem, split):
        return {"id": i, "file_name": f"images/{stem}.dcm", "stem": stem, "height": 100,
                "width": 80, "split": split}

    boxes = {"a": [10.0, 10.0, 20.0, 20.0], "b": [40.0, 50.0, 15.0, 25.0],
             "c": [5.0, 60.0, 30.0, 30.0], "d": [50.0, 5.0, 20.0, 20.0]}
    ids = {"c": 1, "d": 2, "a": 10, "b": 11}
    split = {"a": "test", "b": "test", "c": "train", "d": "train"}
    gt = {"images": [img(ids[s], s, split[s]) for s in boxes],
          "annotations": [{"id": k + 1, "image_id": ids[s], "bbox": boxes[s], "category_id": 1,
                           "area": boxes[s][2] * boxes[s][3], "iscrowd": 0}
                          for k, s in enumerate(boxes)],
          "categories": [{"id": 1, "name": "mass"}]}
    pred = tmp_path / "pred"
    predicted = ["a", "b", "c"]  # in prediction order: ids 1, 2, 3
    atomic_write_json(pred / "images.json", [{"id": i, "file_name": f"{s}.dcm", "stem": s,
                                              "height": 100, "width": 80}
                                             for i, s in enumerate(predicted, 1)])
    atomic_write_json(pred / "masses_results.json",
                      [{"image_id": i, "category_id": 1, "bbox": boxes[s], "score": 0.9}
                       for i, s in enumerate(predicted, 1)])
    atomic_write_json(tmp_path / "masses.json", gt)
    return tmp_path / "masses.json", pred


def test_boxes_maps_a_prediction_folder_by_stem_and_scores_one_split(tmp_path, capsys):
    gt, pred = _prediction_folder(tmp_path)
    out = tmp_path / "report.json"
    base = ["boxes", "--gt", str(gt), "--pred", str(pred / "masses_results.json")]
    # every predicted box is exact: through images.json (found beside the results) a, b, c are hits
    assert main([*base, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_lesions"] == 4 and report["recall"] == 0.75
    assert main([*base, "--split", "test", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_images"] == 2 and report["recall"] == 1.0 and report["ap50_coco"] == 1.0
    # without the mapping the ids would meet the wrong images: ids 1, 2 are c and d in the GT
    (pred / "images.json").rename(pred / "elsewhere.json")
    assert main([*base, "--out", str(out)]) == 2  # id 3 is unknown to the GT: refused
    assert "unknown image_id 3" in capsys.readouterr().err
    assert main([*base, "--pred-images", str(pred / "elsewhere.json"), "--split", "test",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["recall"] == 1.0
    # a prediction for an image the GT does not hold, without --split: one error line
    atomic_write_json(pred / "elsewhere.json", [{"id": 1, "stem": "a"}, {"id": 2, "stem": "b"},
                                                {"id": 3, "stem": "zz"}])
    assert main([*base, "--pred-images", str(pred / "elsewhere.json"), "--out", str(out)]) == 2
    assert "'zz'" in capsys.readouterr().err
