"""``python -m scripts.deeplima``: predict (outputs, failures, resume), evaluate (HTML report), errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from common.io import read_png  # noqa: E402
from deeplima.bundle import random_bundle  # noqa: E402
from scripts.deeplima import main  # noqa: E402

TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A canonical synthetic set (3 images), a folder of its DICOMs plus a corrupt file, a bundle."""
    from datasets.synthetic import generate

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("cli")
    root = generate(base / "data", n=3, seed=7, height=384, width=320, views=("CC",),
                    progress=False)
    inputs = base / "inputs"
    shutil.copytree(root / "images", inputs)
    (inputs / "corrupt.dcm").write_bytes(b"DICM? no")
    ops = {"default_fp": "1",
           "mass": {"1": {"threshold": 0.4, "fp_per_image": 1.0, "sensitivity": 0.5}},
           "calc": {"1": {"threshold": 0.6, "fp_per_image": 1.0, "sensitivity": 0.5}}}
    bundle = random_bundle(base / "bundle", mass_opts=TINY_MASS_OPTS, operating_points=ops)
    out = base / "pred"
    rc = main(["predict", str(inputs), "--output", str(out), "--model", str(bundle.root),
               "--target-fp", "1", "--no-progress", "--threads", "1"])
    return {"root": root, "inputs": inputs, "bundle": bundle.root, "out": out, "rc": rc}


def test_predict_writes_every_output_and_reports_the_corrupt_file(setup):
    out = setup["out"]
    assert setup["rc"] == 1  # one file failed, the others are done
    failures = json.loads((out / "failures.json").read_text())
    assert [f["file"].endswith("corrupt.dcm") for f in failures] == [True]
    assert "corrupt.dcm: " in (out / "failures.txt").read_text()
    images = json.loads((out / "images.json").read_text())
    assert len(images) == 3
    results = json.loads((out / "masses_results.json").read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in images}
    for im in images:
        stem = im["stem"]
        for sub in ("calc_prob", "calc_mask", "calc_labels", "breast_mask", "overlays"):
            assert (out / sub / f"{stem}.png").is_file()
        rec = json.loads((out / "per_image" / f"{stem}.json").read_text())
        assert rec["complete"] is True and rec["thresholds"] == {"mass": 0.4, "calc": 0.6}
        assert rec["height"] == 384 and rec["width"] == 320
        assert all(m["finding"] == (m["score"] >= 0.4) for m in rec["masses"])
        assert all(c["finding"] == (c["score"] >= 0.6) for c in rec["calcifications"])
        assert rec["preprocess"]["meta"]
        labels = read_png(out / "calc_labels" / f"{stem}.png")
        for c in rec["calcifications"][:10]:  # each component's mask is recoverable
            assert (labels == c["label"]).sum() == c["area"]
            assert labels[c["point"][1], c["point"][0]] == c["label"]
        found = read_png(out / "calc_mask" / f"{stem}.png") > 0
        expect = np.isin(labels, [c["label"] for c in rec["calcifications"] if c["finding"]])
        assert (found == expect).all()
    run = json.loads((out / "run.json").read_text())
    assert run["n_done"] == 3 and run["n_failed"] == 1
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary file


def test_resume_redoes_nothing(setup):
    out = setup["out"]
    files = [p for p in out.rglob("*.png")] + list((out / "per_image").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    rc = main(["predict", str(setup["inputs"]), "--output", str(out), "--model",
               str(setup["bundle"]), "--target-fp", "1", "--resume", "--no-progress"])
    assert rc == 1  # the corrupt file is tried again and fails again
    run = json.loads((out / "run.json").read_text())
    assert run["n_done"] == 0 and run["n_skipped"] == 3
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert len(json.loads((out / "images.json").read_text())) == 3


def test_resume_redoes_images_made_by_other_weights(setup, tmp_path):
    out = tmp_path / "pred"
    shutil.copytree(setup["out"], out)
    other = tmp_path / "bundle"
    shutil.copytree(setup["bundle"], other)  # same weights, but another file: another model id
    rc = main(["predict", str(setup["inputs"]), "--output", str(out), "--model", str(other),
               "--target-fp", "1", "--resume", "--no-progress", "--threads", "1"])
    assert rc == 1
    run = json.loads((out / "run.json").read_text())
    assert run["n_done"] == 3 and run["n_skipped"] == 0


def test_evaluate_writes_the_html_report(setup, tmp_path):
    rep = tmp_path / "report"
    rc = main(["evaluate", "--pred", str(setup["out"]), "--gt", str(setup["root"]), "--split", "all",
               "--output", str(rep)])
    assert rc == 0
    html = (rep / "index.html").read_text()
    assert "AP50" in html and "froc_masses.png" in html and "Missed" in html
    assert (rep / "froc_masses.png").is_file() and (rep / "froc_calcifications.png").is_file()
    report = json.loads((rep / "report.json").read_text())
    assert report["mass"]["n_images"] == 3 and report["calc"]["n_images"] == 3
    assert set(report["calc"]["per_type"]) >= {"dot", "vessel", "large"}
    for img in html.split('src="')[1:]:
        assert (rep / img.split('"')[0]).is_file()
    # calcifications are scored against the processed labels by default, the raw masks on request
    assert report["calc"]["gt_labels"] == "processed" and "processed labels" in html
    lo, hi = report["calc"]["min_area_px"]
    assert 0 < lo <= hi < 900  # 6.5 mm² at these coarse pixels (a full field in 384 rows)
    raw = tmp_path / "raw"
    assert main(["evaluate", "--pred", str(setup["out"]), "--gt", str(setup["root"]), "--split", "all",
                 "--gt-labels", "raw", "--output", str(raw)]) == 0
    raw_report = json.loads((raw / "report.json").read_text())
    assert raw_report["calc"]["gt_labels"] == "raw"
    assert raw_report["calc"]["n_lesions"] == report["calc"]["n_lesions"]


def test_missing_bundle_and_unknown_operating_point_are_one_line_errors(setup, tmp_path, capsys):
    rc = main(["predict", str(setup["inputs"]), "--output", str(tmp_path / "o"), "--model",
               str(tmp_path / "no_bundle")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "no_bundle" in err and "\n" not in err
    rc = main(["predict", str(setup["inputs"]), "--output", str(tmp_path / "o"), "--model",
               str(setup["bundle"]), "--target-fp", "7"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "7 FP/image" in err and "\n" not in err
    (setup["bundle"] / "calc_model.pth").rename(tmp_path / "calc_model.pth")
    try:
        rc = main(["predict", str(setup["inputs"]), "--output", str(tmp_path / "o"), "--model",
                   str(setup["bundle"])])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "calc_model.pth" in err and "\n" not in err
    finally:
        (tmp_path / "calc_model.pth").rename(setup["bundle"] / "calc_model.pth")
