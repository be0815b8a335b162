"""Findings where radiologists see them: sizes in millimetres, one summary per study and breast,
files that are not mammograms skipped with their reason, DICOM SEG/SR beside the prediction folder.

The models are stand-ins (deterministic functions of the image) so that the tests check the folder
rather than the networks; ``deeplima predict`` itself runs with them through the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("torch")
pytest.importorskip("detectron2")

from calc_seg.inference import mask_components  # noqa: E402
from deeplima import cli  # noqa: E402
from deeplima.pipeline import FindingsPredictor  # noqa: E402
from deeplima.report import _study_section, read_study_summaries  # noqa: E402
from deeplima.writer import FORMAT_VERSION, write_predictions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# ------------------------------------------------------------------------------------ stand-ins
class FakeMass:
    """Two boxes: one around the brightest pixels (a finding), one small low-scoring corner box."""

    def __call__(self, image: np.ndarray):
        ys, xs = np.nonzero(image >= np.percentile(image[image > 0], 99))
        score = 0.5 + 0.4 * float(image.mean()) / 255
        boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [2, 4, 12, 10]],
                         np.float32)
        return boxes, np.array([score, 0.1], np.float32)


class FakeCalc:
    """The brightest 0.5 % of the breast as calcifications (probability 0.9)."""

    threshold = 0.5

    def predict_probs(self, images, masks):
        return [np.where(m & (im >= np.percentile(im[m], 99.5)), 0.9, 0.0).astype(np.float32)
                for im, m in zip(images, masks)]

    def components(self, prob):
        return mask_components(prob, self.threshold)


def fake_predictor(kinds=("mass", "calc")) -> FindingsPredictor:
    return FindingsPredictor(
        FakeMass() if "mass" in kinds else None, FakeCalc() if "calc" in kinds else None,
        thresholds={**{k: 0.5 for k in kinds}, "source": "test"}, model_id="fake",
        run_info={"weights": {k: f"/nowhere/{k}.pth" for k in kinds}})


def fake_cli(monkeypatch) -> None:
    """``deeplima predict --model anything`` runs the stand-in models."""

    class Bundle:
        def mass_cfg(self):
            return type("Cfg", (), {"MODEL": type("M", (), {"DEVICE": "cpu"})})()

    monkeypatch.setattr(cli, "load_bundle", lambda *a, **k: Bundle())
    monkeypatch.setattr(cli, "Pipeline", lambda bundle, **kw: fake_predictor())


def rewrite(src: Path, dst: Path, **attrs) -> Path:
    """A copy of the DICOM file ``src`` with header attributes changed (None deletes one)."""
    ds = pydicom.dcmread(src)
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if "SOPClassUID" in attrs:
        ds.file_meta.MediaStorageSOPClassUID = attrs["SOPClassUID"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


@pytest.fixture(scope="module")
def studies(tmp_path_factory, synthetic_dataset):
    """Two studies of six 384x320 DICOMs: study A with both breasts (CC and MLO of each: its own
    two views and study B's two images re-labelled as A's other breast), study B with two views."""
    root = synthetic_dataset(n=2, seed=11, height=384, width=320)
    files = sorted((root / "images").rglob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = sorted({str(h.StudyInstanceUID) for h in headers})
    assert len(files) == 4 and len(uids) == 2
    a, b = uids
    folder = tmp_path_factory.mktemp("studies") / "inputs"
    folder.mkdir()
    side_a = next(str(h.ImageLaterality) for h in headers if str(h.StudyInstanceUID) == a)
    other = "R" if side_a == "L" else "L"
    for f, h in zip(files, headers):
        shutil.copy(f, folder / f.name)
        if str(h.StudyInstanceUID) == b:
            rewrite(f, folder / f"A_{other}_{h.ViewPosition}.dcm", StudyInstanceUID=a,
                    ImageLaterality=other, SOPInstanceUID=str(h.SOPInstanceUID) + ".9",
                    SeriesInstanceUID=str(h.SeriesInstanceUID) + ".9")
    return {"inputs": folder, "a": a, "b": b}


def read(path: Path):
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------ physical units
def test_sizes_in_millimetres_with_the_pixel_spacing_and_its_source(studies, tmp_path):
    src = next(studies["inputs"].glob("A_*.dcm"))
    aniso = rewrite(src, tmp_path / "in" / "aniso.dcm", PixelSpacing=["0.2", "0.1"],
                    ImagerPixelSpacing=["0.25", "0.25"])
    imager = rewrite(src, tmp_path / "in" / "imager.dcm", PixelSpacing=None,
                     ImagerPixelSpacing=["0.07", "0.07"])
    out = tmp_path / "pred"
    summary = write_predictions(fake_predictor(), [aniso, imager], out, progress=False)
    assert summary["n_done"] == 2 and summary["n_failed"] == 0

    rec = read(out / "per_image" / "aniso.json")
    assert rec["version"] == FORMAT_VERSION == 2
    assert rec["pixel_spacing"] == {"spacing_mm": [0.2, 0.1], "source": "PixelSpacing"}
    for m in rec["masses"]:  # x and w along the columns (0.1 mm), y and h along the rows (0.2 mm)
        x, y, w, h = m["bbox"]
        assert m["bbox_mm"] == pytest.approx([x * 0.1, y * 0.2, w * 0.1, h * 0.2], abs=1e-3)
    assert rec["calcifications"]
    for c in rec["calcifications"]:
        assert c["area_mm2"] == pytest.approx(c["area"] * 0.02, abs=1e-4)
        x, y, w, h = c["bbox"]
        assert c["bbox_mm"] == pytest.approx([x * 0.1, y * 0.2, w * 0.1, h * 0.2], abs=1e-3)
    assert rec["study"]["study_instance_uid"] == studies["a"]

    rec = read(out / "per_image" / "imager.json")
    assert rec["pixel_spacing"] == {"spacing_mm": [0.07, 0.07], "source": "ImagerPixelSpacing"}
    assert all("bbox_mm" in m for m in rec["masses"])


def test_no_spacing_means_pixels_only(tmp_path):
    png = tmp_path / "x.png"
    yy, xx = np.mgrid[:160, :128]
    img = np.where(((yy - 80) / 72) ** 2 + (xx / 90) ** 2 < 1, 60 + (xx * yy) % 140, 0)
    import cv2

    assert cv2.imwrite(str(png), img.astype(np.uint8))
    out = tmp_path / "pred"
    write_predictions(fake_predictor(), [png], out, progress=False)
    rec = read(out / "per_image" / "x.json")
    assert rec["pixel_spacing"] == {"spacing_mm": None, "source": None}
    assert not any("bbox_mm" in m for m in rec["masses"])
    assert not any("area_mm2" in c or "bbox_mm" in c for c in rec["calcifications"])
    assert not (out / "per_study").exists() or not list((out / "per_study").iterdir())
    assert read(out / "run.json")["n_studies"] == 0  # a PNG belongs to no study


def test_resume_redoes_a_record_of_the_older_format(studies, tmp_path):
    src = next(studies["inputs"].glob("A_*.dcm"))
    out = tmp_path / "pred"
    write_predictions(fake_predictor(), [src], out, progress=False)
    path = out / "per_image" / f"{src.stem}.json"
    rec = read(path)
    path.write_text(json.dumps({**rec, "version": 1}))
    summary = write_predictions(fake_predictor(), [src], out, resume=True, progress=False)
    assert summary["n_done"] == 1 and summary["n_skipped"] == 0
    assert read(path)["version"] == FORMAT_VERSION
    summary = write_predictions(fake_predictor(), [src], out, resume=True, progress=False)
    assert summary["n_done"] == 0 and summary["n_skipped"] == 1


# ---------------------------------------------------------------------------------- per study
def test_per_study_summaries(studies, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(studies["inputs"], inputs)
    bad = inputs / "broken.dcm"  # study B's header, pixel data cut off: fails, listed with B
    one_b = next(p for p in sorted(inputs.glob("*.dcm"))
                 if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
                 == studies["b"])
    bad.write_bytes(one_b.read_bytes()[:3000])
    out = tmp_path / "pred"
    summary = write_predictions(fake_predictor(), [inputs], out, progress=False)
    assert summary["n_done"] == 6 and summary["n_failed"] == 1
    assert summary["n_studies"] == 2
    assert {s["study_instance_uid"] for s in summary["studies"]} == {studies["a"], studies["b"]}
    assert sorted(p.name for p in (out / "per_study").iterdir()) == sorted(
        f"{u}.json" for u in (studies["a"], studies["b"]))

    a = read(out / "per_study" / f"{studies['a']}.json")
    assert a["format"] == "deeplima-study" and a["study_instance_uid"] == studies["a"]
    assert len(a["images"]) == 4 and a["views"] == ["CC", "MLO"] and a["failed"] == []
    assert set(a["breasts"]) == {"L", "R"}
    recs = {im["stem"]: read(out / im["json"]) for im in a["images"]}
    for side, breast in a["breasts"].items():
        mine = {s: r for s, r in recs.items() if r["study"]["laterality"] == side}
        assert sorted(breast["images"]) == sorted(mine) and breast["views"] == ["CC", "MLO"]
        masses = [(m["score"], s, m) for s, r in mine.items() for m in r["masses"]]
        best = max(masses, key=lambda t: t[0])
        assert breast["mass"]["max_score"] == best[0]
        assert breast["mass"]["max"]["stem"] == best[1]
        assert breast["mass"]["max"]["bbox"] == best[2]["bbox"]
        assert breast["mass"]["max"]["bbox_mm"] == best[2]["bbox_mm"]
        assert breast["mass"]["n_findings"] == sum(r["n_mass_findings"] for r in mine.values())
        found = [c for r in mine.values() for c in r["calcifications"] if c["finding"]]
        assert breast["calc"]["n_findings"] == len(found) > 0
        assert breast["calc"]["total_area_px"] == sum(c["area"] for c in found)
        assert breast["calc"]["total_area_mm2"] == pytest.approx(
            sum(c["area_mm2"] for c in found), abs=1e-3)
        assert sum(breast["calc"]["types"].values()) == len(found)

    b = read(out / "per_study" / f"{studies['b']}.json")
    assert len(b["images"]) == 2 and len(b["breasts"]) == 1
    assert [f["file"] for f in b["failed"]] == [str(bad)] and b["failed"][0]["reason"]

    # a rerun without study B removes its file
    for p in inputs.glob("*.dcm"):
        if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == studies["b"]:
            p.unlink()
    summary = write_predictions(fake_predictor(), [inputs], out, resume=True, progress=False)
    assert summary["n_studies"] == 1
    assert [p.name for p in (out / "per_study").iterdir()] == [f"{studies['a']}.json"]
    assert read(out / "per_study" / f"{studies['a']}.json") == a  # rebuilt from the records

    # the HTML report's section: one row per breast
    (out / "per_study" / "9.9.json").write_text("[1, 2]")  # not a summary: a note, not a crash
    got, notes = read_study_summaries(out)
    assert got == [a] and notes == [f"{out / 'per_study' / '9.9.json'}: not a per-study summary"]
    section = _study_section(got, notes)
    assert section.count("<tr><td><code>" + studies["a"]) == 2 and "9.9.json" in section


PREDICT_RANKS = """
    import importlib.util
    import sys

    from deeplima.distributed import init_ranks
    from deeplima.writer import write_predictions
    import torch

    spec = importlib.util.spec_from_file_location("study_tests", {test!r})
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    torch.set_num_threads(1)
    ranks = init_ranks(torch.device("cpu"))
    try:
        write_predictions(tests.fake_predictor(), [sys.argv[1]], sys.argv[2], progress=False,
                          workers=1, batch_size=2, ranks=ranks)
    finally:
        ranks.close()
"""


def test_per_study_is_the_same_whatever_the_run_mode(studies, tmp_path):
    ref, fast, dist = tmp_path / "ref", tmp_path / "fast", tmp_path / "dist"
    write_predictions(fake_predictor(), [studies["inputs"]], ref, progress=False)
    write_predictions(fake_predictor(), [studies["inputs"]], fast, progress=False, workers=2,
                      batch_size=3)
    script = tmp_path / "predict_ranks.py"
    script.write_text(textwrap.dedent(PREDICT_RANKS.format(test=__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--monitor_interval", "0.1", str(script), str(studies["inputs"]), str(dist)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in (ref / "per_study").iterdir())
    assert len(names) == 2
    for other in (fast, dist):
        assert sorted(p.name for p in (other / "per_study").iterdir()) == names
        for name in names:
            assert read(other / "per_study" / name) == read(ref / "per_study" / name), name
        assert read(other / "run.json")["studies"] == read(ref / "run.json")["studies"]


# ------------------------------------------------------------------------------ input selection
def test_files_that_are_not_mammograms_are_skipped_and_listed(studies, tmp_path, monkeypatch,
                                                             capsys):
    inputs = tmp_path / "in"
    shutil.copytree(studies["inputs"], inputs)
    src = sorted(inputs.glob("*.dcm"))[0]
    raw = rewrite(src, inputs / "extra" / "raw.dcm", SOPClassUID=MG_FOR_PROCESSING,
                  PresentationIntentType="FOR PROCESSING", SOPInstanceUID="1.2.3.4.5")
    seg = rewrite(src, inputs / "extra" / "mask_seg.dcm", SOPClassUID=SEG_STORAGE,
                  Modality="SEG", SOPInstanceUID="1.2.3.4.6")
    fake_cli(monkeypatch)
    out = tmp_path / "pred"
    rc = cli.main(["predict", str(inputs), "--output", str(out), "--model", str(tmp_path),
                   "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    run = read(out / "run.json")
    assert run["n_done"] == 6 and run["n_failed"] == 0 and run["n_skipped_inputs"] == 2
    assert {e["file"] for e in run["skipped_inputs"]} == {str(raw), str(seg)}
    assert all(e["reason"] for e in run["skipped_inputs"])
    lines = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split(": ")[0] for line in lines) == sorted([str(raw), str(seg)])
    assert [im["stem"] for im in read(out / "images.json")] == [
        e["stem"] for e in run["inputs"]]  # skipped files have no id, stem or per-image file
    assert not (out / "per_image" / "raw.json").exists()
    notes = [line for line in captured.err.splitlines() if "skipped" in line]
    assert notes == [f"2 file(s) skipped (not mammograms to predict on): see "
                     f"{out / 'skipped.txt'}"]


def test_no_mammogram_among_the_inputs_is_one_error_line(studies, tmp_path, monkeypatch, capsys):
    src = sorted(studies["inputs"].glob("*.dcm"))[0]
    inputs = tmp_path / "in"
    rewrite(src, inputs / "raw.dcm", SOPClassUID=MG_FOR_PROCESSING,
            PresentationIntentType="FOR PROCESSING")
    rewrite(src, inputs / "seg.dcm", SOPClassUID=SEG_STORAGE, Modality="SEG")
    fake_cli(monkeypatch)
    out = tmp_path / "pred"
    rc = cli.main(["predict", str(inputs), "--output", str(out), "--model", str(tmp_path),
                   "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: no mammograms to predict on among 2 input file(s)")
    assert str(out / "skipped.txt") in lines[0]
    assert len((out / "skipped.txt").read_text().splitlines()) == 2
    assert not (out / "run.json").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    rc = cli.main(["predict", str(empty), "--output", str(tmp_path / "p2"), "--model",
                   str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no input files found in ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------- DICOM out
def test_dicom_out_writes_seg_and_sr_and_resume_checks_them(studies, tmp_path, monkeypatch):
    pytest.importorskip("highdicom")
    import deeplima.dicom_out as dicom_out

    monkeypatch.setattr(dicom_out, "bundle_identity",
                        lambda p: {"name": "DeepLIMa test", "version": "0+test",
                                   "weights_sha256": {"mass": "0" * 64, "calc": "1" * 64}})
    src = sorted(studies["inputs"].glob("*.dcm"))[0]
    png = tmp_path / "in" / "plain.png"
    png.parent.mkdir()
    import cv2

    assert cv2.imwrite(str(png), pydicom.dcmread(src).pixel_array.astype(np.uint8) | 1)
    out, dcm = tmp_path / "pred", tmp_path / "dicom"
    summary = write_predictions(fake_predictor(), [src, png], out, progress=False, dicom_out=dcm)
    assert summary["n_done"] == 2 and summary["n_failed"] == 1  # the PNG has no DICOM outputs
    assert summary["failures"] == [f"{png}: no DICOM outputs: the source is not a DICOM file"]
    assert (out / "per_image" / "plain.json").is_file()  # its other outputs are there
    rec = read(out / "per_image" / f"{src.stem}.json")
    assert rec["files"]["dicom"] == {"seg": f"{src.stem}_seg.dcm", "sr": f"{src.stem}_sr.dcm"}
    seg = pydicom.dcmread(dcm / rec["files"]["dicom"]["seg"])
    sr = pydicom.dcmread(dcm / rec["files"]["dicom"]["sr"])
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert seg.StudyInstanceUID == sr.StudyInstanceUID in (studies["a"], studies["b"])
    assert summary["dicom_out"] == str(dcm.resolve())

    # --resume: skipped while its DICOM files are there, redone when one is missing
    summary = write_predictions(fake_predictor(), [src], out, resume=True, progress=False,
                                dicom_out=dcm)
    assert summary["n_skipped"] == 1 and summary["n_failed"] == 0
    (dcm / rec["files"]["dicom"]["sr"]).unlink()
    summary = write_predictions(fake_predictor(), [src], out, resume=True, progress=False,
                                dicom_out=dcm)
    assert summary["n_done"] == 1 and (dcm / rec["files"]["dicom"]["sr"]).is_file()
    # a FRACTIONAL SEG asked for: redone, with the probability SEG
    summary = write_predictions(fake_predictor(), [src], out, resume=True, progress=False,
                                dicom_out=dcm, dicom_fractional=True)
    assert summary["n_done"] == 1
    assert read(out / "per_image" / f"{src.stem}.json")["files"]["dicom"]["prob_seg"] == (
        f"{src.stem}_prob_seg.dcm")


def test_dicom_out_options_reach_the_writer(studies, tmp_path, monkeypatch):
    seen = {}

    def fake_write(*args, **kwargs):
        seen.update(kwargs)
        return {"n_failed": 0, "n_done": 0, "n_skipped": 0, "failures": [],
                "thresholds": {"mass": 0.5, "source": "x"}}

    fake_cli(monkeypatch)
    monkeypatch.setattr(cli, "write_predictions", fake_write)
    assert cli.main(["predict", str(studies["inputs"]), "--output", str(tmp_path / "o"),
                     "--model", str(tmp_path), "--dicom-out", str(tmp_path / "d"),
                     "--dicom-prob", "--no-progress"]) == 0
    assert seen["dicom_out"] == tmp_path / "d" and seen["dicom_fractional"] is True
