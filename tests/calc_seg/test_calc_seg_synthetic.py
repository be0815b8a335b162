"""End to end on the synthetic generator: pre-processing, labels, training CLI, evaluation, prediction."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "calc_seg" / "configs" / "quick_schedules" / "unet_gn_instant_test.yaml"

pytest.importorskip("common.preprocess")


def test_studies_from_synthetic_data(synthetic_root, tmp_path):
    from calc_seg.config import get_calc_seg_cfg
    from calc_seg.data.patches import build_patch_index
    from calc_seg.engine.trainer import load_split
    from common.io import read_json

    cfg = get_calc_seg_cfg(QUICK, ["DATA.ROOT", str(synthetic_root), "OUTPUT_DIR", str(tmp_path)])
    studies = load_split(cfg, "train")
    assert studies
    coco = read_json(synthetic_root / "calcifications.json")
    by_stem = {im["stem"]: im for im in coco["images"]}
    for s in studies:
        assert s.array("image").dtype == np.uint8
        assert s.array("image").shape == (by_stem[s.stem]["height"], by_stem[s.stem]["width"])
        n_ann = sum(a["image_id"] == by_stem[s.stem]["id"] for a in coco["annotations"])
        assert len(s.components) == n_ann  # one canonical annotation per 8-connected component
        assert all(c["type_source"] == "canonical" for c in s.components)
        tm, gt = s.array("train_mask"), s.array("gt")
        assert (tm >= gt).all()  # dilation only adds
    entries = build_patch_index(studies, cfg.PATCH.SIZE, cfg.PATCH.STRIDE)
    assert entries["positive"].any() and (~entries["positive"]).any()
    for e in entries:  # every kept patch has image content
        assert studies[e["study"]].array("image")[e["y"]: e["y"] + 64, e["x"]: e["x"] + 64].any()


@pytest.mark.slow
def test_train_net_cli_and_predict(synthetic_root, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "calc_seg.train_net", "--config-file", str(QUICK), "--no-progress",
         "DATA.ROOT", str(synthetic_root), "OUTPUT_DIR", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= summary["best_val_recall_at_1fp"] <= 1
    assert (out / "model_best.pth").exists() and (out / "config.yaml").exists()
    r = subprocess.run(
        [sys.executable, "-m", "calc_seg.train_net", "--config-file", str(QUICK), "--eval-only",
         "--no-progress", "DATA.ROOT", str(synthetic_root), "OUTPUT_DIR", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "test_report.json").read_text())
    assert {"1", "2", "5", "10"} <= set(report["sensitivity_at_fp"])
    assert report["gt_labels"] == "processed"
    assert report["raw_labels"]["n_lesions"] == report["n_lesions"]  # the raw figures beside them
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    assert printed["gt_labels"] == "processed" and set(printed["raw_labels"]) == {"1", "2", "5", "10"}
    dcm = sorted((synthetic_root / "images").glob("*.dcm"))[0]
    r = subprocess.run(
        [sys.executable, "-m", "scripts.predict_calc", "--config-file", str(QUICK), "--weights",
         str(out / "model_best.pth"), "--input", str(dcm), "--output", str(tmp_path / "pred"),
         "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "pred" / "per_image" / f"{dcm.stem}.json").read_text())
    assert meta["height"] == 512 and meta["width"] == 416 and "calcifications" in meta
