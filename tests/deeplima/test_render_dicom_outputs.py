"""A third-party reading of the DICOM outputs (scripts/render_dicom_outputs.py): the SEG and SR of a
pipeline result with known findings are read back with highdicom alone and drawn on the source;
the mask and the boxes must be the ones written."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")
pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from common.errors import InputError  # noqa: E402
from common.io import read_png  # noqa: E402
from common.preprocess import preprocess  # noqa: E402
from deeplima.bundle import random_bundle  # noqa: E402
from deeplima.dicom_out import bundle_identity, write_dicom_outputs  # noqa: E402
from deeplima.overlay import to_rgb  # noqa: E402
from deeplima.pipeline import Pipeline  # noqa: E402
from deeplima.writer import image_record  # noqa: E402
from scripts.render_dicom_outputs import main, read_dicom_findings  # noqa: E402

TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
SIZE = {"height": 384, "width": 320}

# what the outputs must say: the findings only (the non-findings below stay out of SEG and SR)
MASS_FINDINGS = [(40.25, 60.5, 55.125, 70.75, 0.8125), (200.0, 30.0, 41.5, 36.0, 0.6875)]
CALC_FINDINGS = [(150.0, 100.0, 3.0, 4.0, 0.9375), (180.0, 250.0, 6.0, 12.0, 0.875)]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


@pytest.fixture(scope="module")
def outputs(synthetic_dataset, tmp_path_factory, with_known_findings):
    """(source DICOM, SEG, SR, the written result) of one synthetic image."""
    torch.set_num_threads(1)
    pipeline = Pipeline(random_bundle(tmp_path_factory.mktemp("bundle"),
                                      mass_opts=TINY_MASS_OPTS), threshold=0.5)
    root = synthetic_dataset(n=1, seed=11, views=("CC",), **SIZE)
    source = sorted((root / "images").glob("*.dcm"))[0]
    masses = [{"bbox": list(b[:4]), "score": b[4], "finding": True} for b in MASS_FINDINGS]
    masses.insert(1, {"bbox": [10.0, 12.0, 20.0, 18.0], "score": 0.125, "finding": False})
    res = with_known_findings(pipeline(source), masses, (CALC_FINDINGS[0][4], CALC_FINDINGS[1][4]),
                              peak=0.95)
    record = json.loads(json.dumps(image_record(res, "img", 1, {}, "model"), default=float))
    out = tmp_path_factory.mktemp("dicom")
    files = write_dicom_outputs(res, record, out, "img", bundle_identity(pipeline))
    return source, out / files["seg"], out / files["sr"], res


def test_findings_read_back_equal_the_written_ones(outputs):
    source, seg, sr, res = outputs
    read = read_dicom_findings(source, seg, sr)
    expected_mask = res.calc_mask(findings_only=True)
    assert expected_mask.sum() == 12 + 72
    assert read["mask"].dtype == bool and read["mask"].shape == res.shape
    np.testing.assert_array_equal(read["mask"], expected_mask)
    assert read["segments"] == ["Calcification"]
    assert read["sop_instance_uid"] == pydicom.dcmread(source, stop_before_pixels=True
                                                       ).SOPInstanceUID
    expected = MASS_FINDINGS + CALC_FINDINGS
    assert len(read["boxes"]) == len(expected)
    for got, want in zip(read["boxes"], expected):
        assert got == pytest.approx(want, abs=1e-4)
    assert [f["kind"] for f in read["findings"]] == ["mass"] * 2 + ["calcification"] * 2
    assert read["other_regions"] == 0
    # the SEG alone, the SR alone
    only_seg = read_dicom_findings(source, seg=seg)
    assert only_seg["boxes"] == [] and only_seg["mask"].sum() == 84
    only_sr = read_dicom_findings(source, sr=sr)
    assert not only_sr["mask"].any() and len(only_sr["boxes"]) == 4


def test_main_draws_the_findings(outputs, tmp_path, capsys):
    source, seg, sr, _ = outputs
    out = tmp_path / "pic" / "overlay.png"
    assert main([str(source), "--seg", str(seg), "--sr", str(sr), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert "84 pixel(s)" in line and "4 box(es) (2 mass, 2 calcification)" in line
    picture = read_png(out)
    plain = to_rgb(preprocess(source).image)
    assert picture.shape == plain.shape
    assert not np.array_equal(picture, plain)
    # the findings' pixels are the ones coloured
    changed = np.any(picture != plain, axis=-1)
    assert changed[100:104, 150:153].all()  # filled calcification
    assert changed[60, 45:90].any()  # top edge of the first mass box
    assert not changed[330:, :30].any()  # far from every finding
    assert not list(out.parent.glob(".*.tmp"))

    small = tmp_path / "small.png"
    assert main([str(source), "--sr", str(sr), "--out", str(small), "--max-side", "160"]) == 0
    assert max(read_png(small).shape[:2]) == 160


def test_a_seg_of_another_image_is_refused(outputs, tmp_path, capsys):
    source, seg, sr, _ = outputs
    other = pydicom.dcmread(source)
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other_path = tmp_path / "other.dcm"
    other.save_as(other_path)
    with pytest.raises(InputError, match="not the source SOP Instance"):
        read_dicom_findings(other_path, seg=seg)
    out = tmp_path / "x.png"
    assert main([str(other_path), "--seg", str(seg), "--sr", str(sr), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(seg) in err
    assert not out.exists()
    with pytest.raises(InputError, match="does not list the source SOP Instance"):
        read_dicom_findings(other_path, sr=sr)


def test_a_file_that_is_not_dicom_is_one_line(outputs, tmp_path, capsys):
    source, _, _, _ = outputs
    junk = tmp_path / "junk_seg.dcm"
    junk.write_bytes(b"not a dicom file")
    assert main([str(source), "--seg", str(junk), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {junk}: ") and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(source), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
