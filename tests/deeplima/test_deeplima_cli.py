"""``deeplima`` (``python -m deeplima``): predict (outputs, failures, resume), predict-mass and
predict-calc (the same folder, one model), evaluate (HTML report), bundle (from training output
folders, model card, calibration), forwarded training and conversion commands, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from common.io import read_png, sha256_file  # noqa: E402
from deeplima.bundle import (  # noqa: E402
    calc_source,
    load_bundle,
    mass_source,
    random_bundle,
    save_operating_points,
)
from deeplima.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_dataset):
    """A canonical synthetic set (3 images), a folder of its DICOMs plus a corrupt file, a
    bundle."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("cli")
    root = synthetic_dataset(n=3, seed=7, height=384, width=320, views=("CC",))
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
    rc = main(["evaluate", "--pred", str(setup["out"]), "--gt", str(setup["root"]),
               "--split", "all", "--output", str(rep)])
    assert rc == 0
    html = (rep / "index.html").read_text()
    assert "AP50" in html and "froc_masses.png" in html and "Missed" in html
    assert (rep / "froc_masses.png").is_file() and (rep / "froc_calcifications.png").is_file()
    report = json.loads((rep / "report.json").read_text())
    assert report["mass"]["n_images"] == 3 and report["calc"]["n_images"] == 3
    assert set(report["calc"]["per_type"]) >= {"dot", "vessel", "large"}
    for img in html.split('src="')[1:]:
        assert (rep / img.split('"')[0]).is_file()
    # the per-study summaries of the folder: three one-view studies
    assert len(report["studies"]) == 3 and "<h2>Studies</h2>" in html
    assert all(f"<code>{st['study_instance_uid']}</code>" in html for st in report["studies"])
    # calcifications are scored against the processed labels by default, the raw masks on request
    assert report["calc"]["gt_labels"] == "processed" and "processed labels" in html
    lo, hi = report["calc"]["min_area_px"]
    assert 0 < lo <= hi < 900  # 6.5 mm² at these coarse pixels (a full field in 384 rows)
    raw = tmp_path / "raw"
    assert main(["evaluate", "--pred", str(setup["out"]), "--gt", str(setup["root"]),
                 "--split", "all", "--gt-labels", "raw", "--output", str(raw)]) == 0
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


# ------------------------------------------------------------------------------------------- bundle
@pytest.fixture(scope="module")
def training_outputs(setup, tmp_path_factory):
    """Output folders as the two trainers leave them, holding the fixture bundle's models: a mass
    run stopped early (a periodic checkpoint named by ``last_checkpoint``, no ``model_final.pth``)
    and a U-Net run with ``model_best.pth`` and ``model_last.pth``."""
    src = load_bundle(setup["bundle"])
    base = tmp_path_factory.mktemp("train_out")
    mass = base / "mass_det"
    mass.mkdir()
    (mass / "config.yaml").write_text(src.mass_cfg().dump())  # detectron2's default_setup
    state = torch.load(src.mass_weights, map_location="cpu")["model"]
    torch.save({"model": state, "optimizer": {}, "iteration": 99}, mass / "model_0000099.pth")
    (mass / "last_checkpoint").write_text("model_0000099.pth")
    calc = base / "calc_seg"
    calc.mkdir()
    calc_cfg = src.calc_cfg()
    (calc / "config.yaml").write_text(calc_cfg.dump())  # calc_seg.train_net's setup
    state = torch.load(src.calc_weights, map_location="cpu")["model"]
    for name, epoch in (("model_best.pth", 0), ("model_last.pth", 1)):
        torch.save({"model": state, "optimizer": {}, "epoch": epoch, "best_score": 0.25,
                    "cfg": calc_cfg.dump()}, calc / name)
    return {"mass": mass, "calc": calc}


def test_bundle_from_training_folders_loads_and_predicts(setup, training_outputs, tmp_path):
    mass, calc = training_outputs["mass"], training_outputs["calc"]
    out = tmp_path / "bundle"
    rc = main(["bundle", "--mass", str(mass), "--calc", str(calc), "--out", str(out),
               "--no-progress", "--threads", "1"])
    assert rc == 0
    bundle = load_bundle(out)
    card = json.loads((out / "bundle.json").read_text())["model_card"]
    assert card == bundle.model_card
    # weights copied byte for byte: the card's hash is the bundle file's and the checkpoint's
    assert card["mass"]["weights_sha256"] == sha256_file(bundle.mass_weights) == sha256_file(
        mass / "model_0000099.pth")
    assert card["calc"]["weights_sha256"] == sha256_file(bundle.calc_weights) == sha256_file(
        calc / "model_best.pth")
    assert card["mass"]["config_sha256"] == sha256_file(bundle.mass_config)
    assert card["mass"]["source"] == {
        "output_dir": str(mass.resolve()), "checkpoint": "best",
        "config": str((mass / "config.yaml").resolve()),
        "weights": str((mass / "model_0000099.pth").resolve()), "iteration": 99}
    assert card["calc"]["source"]["weights"] == str((calc / "model_best.pth").resolve())
    assert card["calc"]["source"]["epochs_done"] == 1
    assert card["calc"]["source"]["best_val_recall_at_1fp"] == 0.25
    assert card["mass"]["settings"]["MODEL.RESNETS.DEPTH"] == 18
    assert "MODEL.ENCODER" in card["calc"]["settings"]
    assert card["calibration"] is None and bundle.operating_points == {}

    image = sorted((setup["root"] / "images").glob("*.dcm"))[0]
    pred = tmp_path / "pred"
    rc = main(["predict", str(image), "--output", str(pred), "--model", str(out), "--threshold",
               "0.5", "--no-progress", "--threads", "1"])
    assert rc == 0
    assert len(json.loads((pred / "images.json").read_text())) == 1


def test_bundle_calibrated_on_a_split_records_the_validation_figures(setup, training_outputs,
                                                                    tmp_path):
    from common.canonical import load_canonical_dicts

    mass, calc = training_outputs["mass"], training_outputs["calc"]
    out = tmp_path / "bundle"
    rc = main(["bundle", "--mass-config", str(mass / "config.yaml"), "--mass-weights",
               str(mass / "model_0000099.pth"), "--calc", str(calc), "--checkpoint", "final",
               # the train split: the only one of this tiny set with calcifications
               "--calibrate-on", str(setup["root"]), "--split", "train", "--fps", "1,2",
               "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    bundle = load_bundle(out)
    ops = json.loads((out / "operating_points.json").read_text())
    assert bundle.operating_points == ops and set(ops["mass"]) == set(ops["calc"]) == {"1", "2"}
    card = json.loads((out / "bundle.json").read_text())["model_card"]
    assert card["mass"]["source"]["output_dir"] is None
    assert card["calc"]["source"]["checkpoint"] == "final"
    assert card["calc"]["source"]["weights"] == str((calc / "model_last.pth").resolve())
    assert card["calc"]["weights_sha256"] == sha256_file(calc / "model_last.pth")
    cal = card["calibration"]
    images = load_canonical_dicts(setup["root"], "mass", "train")
    assert cal["data_root"] == str(setup["root"].resolve()) and cal["split"] == "train"
    assert cal["n_images"] == len(images) == 2
    assert cal["mass"]["n_lesions"] == sum(len(d["annotations"]) for d in images)
    assert cal["calc"]["n_lesions"] > 0 and cal["calc"]["gt_labels"] == "processed"
    assert sum(t["n_lesions"] for t in cal["calc"]["per_type"].values()) <= cal["calc"]["n_lesions"]
    assert all(0 <= v <= 1 for v in cal["calc"]["sensitivity_at_fp"].values())
    for kind in ("mass", "calc"):
        assert set(cal[kind]["sensitivity_at_fp"]) == {"1", "2"}
        assert cal["thresholds"][kind] == {k: v["threshold"] for k, v in ops[kind].items()}
    assert cal["default_fp"] == "1"


def test_checkpoint_choice(tmp_path):
    mass, calc = tmp_path / "mass", tmp_path / "calc"
    for folder, names in ((mass, ["config.yaml", "model_0000099.pth", "model_final.pth"]),
                          (calc, ["config.yaml", "model_best.pth", "model_last.pth"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"")
    (mass / "last_checkpoint").write_text("model_0000099.pth")  # (hand-edited: final is newer)
    assert mass_source(mass).weights == mass / "model_final.pth"
    assert mass_source(mass, checkpoint="final").weights == mass / "model_0000099.pth"
    assert calc_source(calc).weights == calc / "model_best.pth"
    assert calc_source(calc, checkpoint="final").weights == calc / "model_last.pth"


def test_bundle_errors_are_one_line_with_exit_2(training_outputs, tmp_path, capsys):
    mass, calc = training_outputs["mass"], training_outputs["calc"]
    out = str(tmp_path / "bundle")
    no_best = tmp_path / "calc_no_best"
    no_best.mkdir()
    for name in ("config.yaml", "model_last.pth"):
        shutil.copy(calc / name, no_best / name)
    no_ckpt = tmp_path / "mass_no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(mass / "config.yaml", no_ckpt / "config.yaml")
    cases = [
        (["--mass", str(mass), "--calc", str(no_best)], "model_best.pth"),
        (["--mass", str(no_ckpt), "--calc", str(calc)], "model_final.pth"),
        (["--mass", str(tmp_path / "nowhere"), "--calc", str(calc)], "nowhere"),
        (["--mass-config", str(mass / "config.yaml"), "--calc", str(calc)], "weights"),
        (["--mass-config", str(mass / "config.yaml"), "--mass-weights",
          str(calc / "model_best.pth"), "--calc", str(calc)], "do not fit"),
    ]
    for args, expect in cases:
        rc = main(["bundle", *args, "--out", out, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and expect in err and "\n" not in err, err
    assert not (tmp_path / "bundle" / "bundle.json").exists()


def test_bundles_without_model_card_still_load(setup, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(setup["bundle"], old)
    manifest = json.loads((old / "bundle.json").read_text())
    del manifest["model_card"]
    (old / "bundle.json").write_text(json.dumps(manifest))
    bundle = load_bundle(old)
    assert bundle.model_card == {} and bundle.operating_points["default_fp"] == "1"
    save_operating_points(bundle, bundle.operating_points)  # recalibrating adds the card's entry
    assert load_bundle(old).model_card["calibration"]["thresholds"]["mass"] == {"1": 0.4}


# ------------------------------------------------------------------------------ one model alone
def test_single_model_predictions_write_the_same_folder(setup, tmp_path):
    """predict-mass / predict-calc with the bundle's own configs and weights: predict's folder
    without the other model's entries and files, and the same findings, maps and labels as
    predict's."""
    bundle = load_bundle(setup["bundle"])
    image = sorted((setup["root"] / "images").glob("*.dcm"))[0]
    stem = image.stem
    both = json.loads((setup["out"] / "per_image" / f"{stem}.json").read_text())
    args = ["--input", str(image), "--no-progress", "--threads", "1"]
    mass_out, calc_out = tmp_path / "mass", tmp_path / "calc"
    assert main(["predict-mass", "--config-file", str(bundle.mass_config), "--weights",
                 str(bundle.mass_weights), "--output", str(mass_out), "--threshold", "0.4", *args,
                 "MODEL.DEVICE", "cpu"]) == 0
    assert main(["predict-calc", "--config-file", str(bundle.calc_config), "--weights",
                 str(bundle.calc_weights), "--output", str(calc_out), "--threshold", "0.6",
                 "--device", "cpu", *args]) == 0

    mass = json.loads((mass_out / "per_image" / f"{stem}.json").read_text())
    assert mass["masses"] == both["masses"] and mass["thresholds"] == {"mass": 0.4}
    assert "calcifications" not in mass and "n_calc_findings" not in mass
    assert set(mass["files"]) == {"breast_mask", "overlay"}
    assert not (mass_out / "calc_prob").exists()
    results = json.loads((mass_out / "masses_results.json").read_text())
    assert [(r["bbox"], r["score"]) for r in results] == [(m["bbox"], m["score"])
                                                          for m in both["masses"]]

    calc = json.loads((calc_out / "per_image" / f"{stem}.json").read_text())
    assert calc["calcifications"] == both["calcifications"] and calc["thresholds"] == {"calc": 0.6}
    assert "masses" not in calc and "n_mass_findings" not in calc
    assert not (calc_out / "masses_results.json").exists()
    for sub in ("calc_prob", "calc_mask", "calc_labels", "breast_mask"):
        np.testing.assert_array_equal(read_png(calc_out / sub / f"{stem}.png"),
                                      read_png(setup["out"] / sub / f"{stem}.png"))
    for out in (mass_out, calc_out):
        assert read_png(out / "overlays" / f"{stem}.png").shape == (384, 320, 3)
        run = json.loads((out / "run.json").read_text())
        assert run["complete"] and run["n_done"] == 1 and "weights" in run
        assert [im["stem"] for im in json.loads((out / "images.json").read_text())] == [stem]


def test_single_model_errors_are_one_line(setup, tmp_path, capsys):
    bundle = load_bundle(setup["bundle"])
    out = str(tmp_path / "o")
    cases = [
        (["predict-calc", "--config-file", str(bundle.calc_config), "--weights",
          str(tmp_path / "none.pth")], "weights file not found"),
        (["predict-calc", "--config-file", str(bundle.calc_config), "--weights",
          str(bundle.mass_weights)], "do not fit"),
        (["predict-mass", "--config-file", str(bundle.mass_config), "--weights",
          str(bundle.calc_weights)], "do not fit"),
        (["predict-mass", "--config-file", str(tmp_path / "none.yaml"), "--weights",
          str(bundle.mass_weights)], "none.yaml"),
        (["predict-calc", "--config-file", str(bundle.calc_config), "--weights",
          str(bundle.calc_weights), "--input", "x", "--output", out, "NO.SUCH_KEY", "1"], "NO"),
    ]
    for argv, expect in cases:
        argv = argv if "--input" in argv else [*argv, "--input", "x", "--output", out]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and expect in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ the command itself
def test_python_m_deeplima_runs_without_import_noise():
    r = subprocess.run([sys.executable, "-m", "deeplima", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for command in ("predict", "predict-mass", "predict-calc", "evaluate", "calibrate", "bundle",
                    "train-mass", "train-calc", "convert"):
        assert command in r.stdout


def test_training_and_conversion_are_forwarded(tmp_path, capsys):
    quick = REPO / "calc_seg" / "configs" / "quick_schedules" / "unet_gn_instant_test.yaml"
    with pytest.raises(SystemExit, match="DATA.ROOT is not set"):  # calc_seg.train_net's own check
        main(["train-calc", "--config-file", str(quick)])
    assert main(["convert", "no_such_source"]) == 2
    assert "SOURCE must be one of" in capsys.readouterr().err
    out = tmp_path / "syn"
    assert main(["convert", "synthetic", "--out", str(out), "--n", "1", "--height", "160",
                 "--width", "128", "--quiet"]) == 0
    assert (out / "masses.json").is_file()
