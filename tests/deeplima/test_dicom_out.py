"""DICOM SEG and SR of a prediction (deeplima.dicom_out): built from real pipeline results on
synthetic DICOMs (every photometric interpretation and BitsStored of the generator), with findings
set to known boxes and components so that nothing is empty; checked with dciodvfy and read back
with highdicom against the per-image JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")
hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from common.errors import InputError  # noqa: E402
from common.io import atomic_write_png  # noqa: E402
from datasets.synthetic.constants import WINDOW_MODES  # noqa: E402
from deeplima.bundle import random_bundle  # noqa: E402
from deeplima.dicom_out import bundle_identity, write_dicom_outputs  # noqa: E402
from deeplima.pipeline import FindingsPredictor, ImageResult, Pipeline  # noqa: E402
from deeplima.writer import image_record  # noqa: E402

TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
SIZE = {"height": 384, "width": 320}
# every photometric interpretation and BitsStored the synthetic generator offers, with its window
# modes spread over them
VARIANTS = [(ph, bits, WINDOW_MODES[(i + j) % len(WINDOW_MODES)])
            for i, ph in enumerate(("MONOCHROME1", "MONOCHROME2"))
            for j, bits in enumerate((12, 14, 16))]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


# ------------------------------------------------------------------------------------- dciodvfy
def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for ``path`` (the test is skipped without dciodvfy, and
    fails without it on CI)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (dicom3tools) is not installed")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Abort"))]


# --------------------------------------------------------------------------------------- setup
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    torch.set_num_threads(1)
    bundle = random_bundle(tmp_path_factory.mktemp("bundle"), mass_opts=TINY_MASS_OPTS)
    return Pipeline(bundle, threshold=0.5)


@pytest.fixture(scope="module")
def identity(pipeline):
    return bundle_identity(pipeline)


def _source(synthetic_dataset, photometric="MONOCHROME2", bits=16, window=WINDOW_MODES[0]
            ) -> Path:
    root = synthetic_dataset(n=1, seed=11, views=("CC",), photometric=photometric,
                             bits_stored=bits, window_mode=window, **SIZE)
    return sorted((root / "images").glob("*.dcm"))[0]


def _record(res: ImageResult, stem: str = "img") -> dict:
    """The per-image JSON of the writer, as read back from disk."""
    return json.loads(json.dumps(image_record(res, stem, 1, {}, "model"), default=float))


# two masses (one a finding) and three calcification components (two findings, of two shapes)
KNOWN_MASSES = [{"bbox": [40.25, 60.5, 55.125, 70.75], "score": 0.8125, "finding": True},
                {"bbox": [10.0, 12.0, 20.0, 18.0], "score": 0.125, "finding": False}]


@pytest.fixture
def known(with_known_findings):
    """``res`` with :data:`KNOWN_MASSES` and the known calcification components (scores 0.9) in
    place of what the random models found."""
    return lambda res: with_known_findings(res, KNOWN_MASSES, (0.9, 0.9), peak=0.9)


# ------------------------------------------------------------------------------------- checks
def _check_common(path: Path, src, new_uids: set) -> None:
    """dciodvfy clean; same study, patient and frame of reference as the source; new UIDs."""
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
    for key in ("SeriesInstanceUID", "SOPInstanceUID"):
        assert ds[key].value not in (src.SeriesInstanceUID, src.SOPInstanceUID)
        assert ds[key].value not in new_uids
        new_uids.add(ds[key].value)
    assert ds.Manufacturer == "DeepLIMa"


def _check_seg(path: Path, src, expected: np.ndarray, identity: dict) -> None:
    seg = hd.seg.segread(path)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    refs = [r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence]
    assert refs == [src.SOPInstanceUID]
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])
    got = pixels[0, ..., 0]
    if expected.dtype == bool:
        np.testing.assert_array_equal(got.astype(bool), expected)
    else:  # FRACTIONAL: 8-bit probability, read back as a float in [0, 1]
        assert np.issubdtype(got.dtype, np.floating)
        np.testing.assert_allclose(got, expected, atol=0.5 / 255 + 1e-6)
    desc = seg.SegmentSequence[0]
    assert desc.SegmentAlgorithmType == "AUTOMATIC"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "18115005"
    alg = desc.SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == identity["name"] and alg.AlgorithmVersion == identity["version"]
    assert alg.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SoftwareVersions == identity["version"]


def _measurements(group) -> dict:
    return {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}


def _check_sr(path: Path, src, rec: dict, spacing) -> dict:
    sr = hd.sr.srread(path)
    evidence = [r.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in s.ReferencedSeriesSequence for r in ser.ReferencedSOPSequence]
    assert evidence == [src.SOPInstanceUID]
    report = sr.content
    rois = report.get_planar_roi_measurement_groups()
    summaries = report.get_image_measurement_groups()
    masses = [m for m in rec.get("masses", ()) if m["finding"]]
    calcs = [c for c in rec.get("calcifications", ()) if c["finding"]]
    assert len(rois) == len(masses) + len(calcs)
    assert len(summaries) == ("masses" in rec) + ("calcifications" in rec)
    for group, item in zip(rois, masses + calcs):
        x, y, w, h = item["bbox"]
        corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], np.float32)
        np.testing.assert_array_equal(group.roi.value, corners)
        image = group.roi.ContentSequence[0]  # SELECTED FROM: the source image
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        values = _measurements(group)
        assert values["Certainty of Finding"][0] == pytest.approx(item["score"], rel=1e-9)
        if spacing is not None and item in masses:
            assert values["Width"] == (pytest.approx(w * spacing[1]), "mm")
            assert values["Height"] == (pytest.approx(h * spacing[0]), "mm")
        if item in calcs:
            area = item["area"] * (spacing[0] * spacing[1] if spacing else 1)
            assert values["Area"] == (pytest.approx(area), "mm2" if spacing else "{pixels}")
    by_type = {g.finding_type.value: _measurements(g) for g in summaries}
    if "masses" in rec:
        assert by_type["4147007"]["Number of lesions"][0] == len(masses)
        assert by_type["4147007"]["Threshold Value"][0] == pytest.approx(rec["thresholds"]["mass"])
    if "calcifications" in rec:
        calc = by_type["18115005"]
        assert calc["Number of calcifications"][0] == len(calcs)
        assert calc["Threshold Value"][0] == pytest.approx(rec["thresholds"]["calc"])
        total = sum(c["area"] for c in calcs) * (spacing[0] * spacing[1] if spacing else 1)
        assert calc["Area"][0] == pytest.approx(total)
    return {"rois": rois, "summaries": summaries}


# --------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("photometric,bits,window", VARIANTS)
def test_seg_and_sr_of_known_findings(known, pipeline, identity, synthetic_dataset, tmp_path,
                                      photometric, bits, window):
    path = _source(synthetic_dataset, photometric, bits, window)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    assert src.PhotometricInterpretation == photometric and src.BitsStored == bits
    res = known(pipeline(path))
    rec = _record(res)
    files = write_dicom_outputs(res, rec, tmp_path, "img", identity, fractional=True)
    assert files == {"seg": "img_seg.dcm", "sr": "img_sr.dcm", "prob_seg": "img_prob_seg.dcm"}
    uids: set = set()
    for name in files.values():
        _check_common(tmp_path / name, src, uids)
    mask = res.calc_mask(findings_only=True)
    assert mask.sum() == 12 + 72
    _check_seg(tmp_path / files["seg"], src, mask, identity)
    _check_seg(tmp_path / files["prob_seg"], src, res.calc_prob, identity)
    spacing = rec["preprocess"]["meta"]["pixel_spacing"]
    assert spacing is not None
    _check_sr(tmp_path / files["sr"], src, rec, spacing)
    # the SEG's segment and the SR's calcification summary share their Tracking UID
    seg = pydicom.dcmread(tmp_path / files["seg"])
    sr = hd.sr.srread(tmp_path / files["sr"])
    calc = [g for g in sr.content.get_image_measurement_groups()
            if g.finding_type.value == "18115005"]
    assert calc[0].tracking_uid == seg.SegmentSequence[0].TrackingUID


def test_real_pipeline_output_unchanged(pipeline, identity, synthetic_dataset, tmp_path):
    """The random models' own results (threshold 0 marks every detection and component a
    finding), written as they are."""
    path = _source(synthetic_dataset)
    res = pipeline(path)
    res.thresholds = {"mass": 0.0, "calc": 0.0}
    for m in res.masses:
        m["finding"] = True
    for c in res.calcifications:
        c["finding"] = True
    rec = _record(res)
    files = write_dicom_outputs(res, rec, tmp_path, "real", identity)
    assert set(files) == {"seg", "sr"}
    src = pydicom.dcmread(path, stop_before_pixels=True)
    uids: set = set()
    for name in files.values():
        _check_common(tmp_path / name, src, uids)
    _check_seg(tmp_path / files["seg"], src, res.calc_mask(findings_only=True), identity)
    _check_sr(tmp_path / files["sr"], src, rec, rec["preprocess"]["meta"]["pixel_spacing"])


def test_no_findings_still_writes_an_empty_segment(known, pipeline, identity, synthetic_dataset,
                                                   tmp_path):
    path = _source(synthetic_dataset)
    res = known(pipeline(path))
    for item in res.masses + res.calcifications:
        item["finding"] = False
    rec = _record(res)
    files = write_dicom_outputs(res, rec, tmp_path, "none", identity)
    assert set(files) == {"seg", "sr"}
    src = pydicom.dcmread(path, stop_before_pixels=True)
    assert dciodvfy_errors(tmp_path / files["seg"]) == []
    assert dciodvfy_errors(tmp_path / files["sr"]) == []
    _check_seg(tmp_path / files["seg"], src, np.zeros(res.shape, bool), identity)
    groups = _check_sr(tmp_path / files["sr"], src, rec, rec["preprocess"]["meta"]["pixel_spacing"])
    assert groups["rois"] == []


@pytest.mark.parametrize("kind", ["mass", "calc"])
def test_single_model_results(known, pipeline, synthetic_dataset, tmp_path, kind):
    """A mass-only prediction has no SEG; a calcification-only one has both files, and the SR says
    nothing about masses. The identity of a single-model predictor names its weights."""
    path = _source(synthetic_dataset)
    full = known(pipeline(path))
    if kind == "mass":
        predictor = FindingsPredictor(pipeline.mass, None, thresholds={"mass": 0.5, "source": "t"},
                                      run_info={"weights": {
                                          "mass": str(pipeline.bundle.mass_weights)}})
        res = ImageResult(full.source, full.image, full.breast_mask, full.masses, None, None,
                          None, full.record, {"mass": 0.5})
    else:
        predictor = FindingsPredictor(None, pipeline.calc, thresholds={"calc": 0.5, "source": "t"},
                                      run_info={"weights": {
                                          "calc": str(pipeline.bundle.calc_weights)}})
        res = ImageResult(full.source, full.image, full.breast_mask, None, full.calcifications,
                          full.calc_prob, full.calc_labels, full.record, {"calc": 0.5})
    ident = bundle_identity(predictor)
    assert set(ident["weights_sha256"]) == {kind}
    assert ident["weights_sha256"][kind] == bundle_identity(pipeline.bundle)["weights_sha256"][kind]
    assert ident["operating_point"] == "t"
    rec = _record(res)
    files = write_dicom_outputs(res, rec, tmp_path, kind, ident, fractional=True)
    assert set(files) == ({"sr"} if kind == "mass" else {"seg", "sr", "prob_seg"})
    src = pydicom.dcmread(path, stop_before_pixels=True)
    for name in files.values():
        assert dciodvfy_errors(tmp_path / name) == []
    _check_sr(tmp_path / files["sr"], src, rec, rec["preprocess"]["meta"]["pixel_spacing"])
    algorithm = hd.sr.srread(tmp_path / files["sr"]).content.get_image_measurement_groups()[0]
    assert any("operating_point: t" in str(item.get("TextValue", ""))
               for item in _walk(algorithm))


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", ()))


def test_breast_thickness_gives_pixel_measures_and_no_spacing_gives_pixels(known,
        pipeline, identity, synthetic_dataset, tmp_path):
    """A source with the compressed breast thickness: the SEG's Pixel Measures carry the spacing
    and that thickness. A source without any spacing: areas in pixels, no box sizes in mm."""
    path = _source(synthetic_dataset)
    res = known(pipeline(path))
    ds = pydicom.dcmread(path)
    ds.BodyPartThickness = "45.5"
    thick = tmp_path / "thick.dcm"
    ds.save_as(thick)
    del ds.BodyPartThickness, ds.PixelSpacing, ds.ImagerPixelSpacing
    flat = tmp_path / "flat.dcm"
    ds.save_as(flat)

    res.source = str(thick)
    rec = _record(res)
    files = write_dicom_outputs(res, rec, tmp_path / "thick", "t", identity)
    seg_path = tmp_path / "thick" / files["seg"]
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == 45.5
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(
        rec["preprocess"]["meta"]["pixel_spacing"])
    _check_seg(seg_path, pydicom.dcmread(thick), res.calc_mask(), identity)

    res.source = str(flat)
    rec = _record(res)
    rec["preprocess"]["meta"]["pixel_spacing"] = None  # what the pre-processing reads from it
    files = write_dicom_outputs(res, rec, tmp_path / "flat", "f", identity)
    src = pydicom.dcmread(flat, stop_before_pixels=True)
    for name in files.values():
        assert dciodvfy_errors(tmp_path / "flat" / name) == []
    groups = _check_sr(tmp_path / "flat" / files["sr"], src, rec, None)
    assert "Width" not in _measurements(groups["rois"][0])


def test_a_png_source_is_refused(known, pipeline, identity, synthetic_dataset, tmp_path):
    path = _source(synthetic_dataset)
    res = known(pipeline(path))
    png = tmp_path / "image.png"
    atomic_write_png(png, res.image)
    res.source = str(png)
    with pytest.raises(InputError, match="image.png: DICOM outputs need a DICOM source"):
        write_dicom_outputs(res, _record(res), tmp_path / "out", "p", identity)
    assert not (tmp_path / "out").exists()
    res.source = "<array>"
    with pytest.raises(InputError, match="DICOM source"):
        write_dicom_outputs(res, _record(res), tmp_path / "out", "p", identity)


def test_identity_of_a_bundle(pipeline):
    ident = bundle_identity(pipeline.bundle)
    card = pipeline.bundle.model_card
    assert ident["name"] == "DeepLIMa"
    assert ident["weights_sha256"] == {k: card[k]["weights_sha256"] for k in ("mass", "calc")}
    assert ident["version"].startswith(ident["software_version"] + "+w")
    assert len(ident["version"]) <= 64
    # the pipeline's identity is the bundle's, with the operating point and model id
    full = bundle_identity(pipeline)
    assert full["version"] == ident["version"]
    assert full["operating_point"] == "--threshold 0.5"
    assert full["model_id"] == pipeline.model_id


def test_spacing_falls_back_to_the_source_header(known, pipeline, identity, synthetic_dataset,
                                                 tmp_path):
    """A record without the pre-processing metadata: sizes in mm from the source's own spacing
    (which building the SEG before the SR must leave in place)."""
    path = _source(synthetic_dataset)
    res = known(pipeline(path))
    rec = _record(res)
    spacing = rec.pop("preprocess")["meta"]["pixel_spacing"]
    files = write_dicom_outputs(res, rec, tmp_path, "s", identity)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    _check_sr(tmp_path / files["sr"], src, rec, spacing)
