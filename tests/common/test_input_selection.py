"""Choosing the mammograms among the inputs (common.inputs), pixel spacing with its source and the
header identity of an image (common.dicom)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.dicom import (
    SPACING_SOURCES,
    dicom_meta,
    image_view,
    load_image,
    mammogram_skip_reason,
    pixel_spacing,
    pixel_spacing_info,
)
from common.errors import InputError
from common.inputs import collect_inputs, group_by_study, is_dicom_file, select_inputs

MG = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Two synthetic studies (CC and MLO of one breast each), small images."""
    from datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("syn") / "s", n=2, seed=4, height=256, width=192,
                    progress=False)


def _write(path: Path, sop_class: str, modality: str, pixels: np.ndarray | None = None,
           **attrs) -> Path:
    """A DICOM Part 10 file of the given SOP class and modality (pixels uint8/uint16, optional)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        bits = 8 * pixels.dtype.itemsize
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _mammograms(synthetic: Path) -> list[Path]:
    return sorted(synthetic.glob("images/*.dcm"))


# ------------------------------------------------------------------------------------- CBIS-DDSM
def _cbis_tree(root: Path, synthetic: Path) -> tuple[list[Path], dict[Path, str]]:
    """CBIS-DDSM's layout: every file a Secondary Capture with Modality MG; per case a full
    mammogram series, and an ROI series holding the lesion crop and the binary ROI mask (case 1),
    or a mask series and a separate cropped-image series (case 2). Returns the full images and the
    other files with a word their skip reason must contain."""
    full, others = [], {}
    for case, src in enumerate(_mammograms(synthetic)[:2], start=1):
        pixels = pydicom.dcmread(src).pixel_array
        subject = f"Mass-Training_P_0000{case}_LEFT_CC"
        study = generate_uid()
        full.append(_write(
            root / subject / "07-20-2016-DDSM-1" / "1.000000-full mammogram images-1" / "1-1.dcm",
            SECONDARY_CAPTURE, "MG", pixels, StudyInstanceUID=study,
            SeriesDescription="full mammogram images"))
        mask = np.zeros(pixels.shape, np.uint8)
        mask[60:100, 50:90] = 255
        crop = pixels[50:110, 40:100].copy()
        roi = root / f"{subject}_1" / "09-06-2017-DDSM-2"
        if case == 1:  # crop and mask in one series, described as ROI mask images
            series = roi / "1.000000-ROI mask images-2"
            others[_write(series / "1-1.dcm", SECONDARY_CAPTURE, "MG", crop,
                          SeriesDescription="ROI mask images")] = "crop"
            others[_write(series / "1-2.dcm", SECONDARY_CAPTURE, "MG", mask,
                          SeriesDescription="ROI mask images")] = "mask"
        else:
            others[_write(roi / "1.000000-ROI mask images-2" / "1-1.dcm", SECONDARY_CAPTURE,
                          "MG", mask, SeriesDescription="ROI mask images")] = "mask"
            others[_write(roi / "1.000000-cropped images-3" / "1-1.dcm", SECONDARY_CAPTURE,
                          "MG", crop, SeriesDescription="cropped images")] = "crop"
    return full, others


def test_cbis_ddsm_tree_selects_only_full_mammograms(tmp_path, synthetic):
    full, others = _cbis_tree(tmp_path / "CBIS-DDSM", synthetic)
    sel = select_inputs([tmp_path / "CBIS-DDSM"])
    assert sorted(sel.images) == sorted(full)
    assert {p for p, _ in sel.skipped} == set(others)
    for path, reason in sel.skipped:
        assert others[path] in reason.lower() and "\n" not in reason, (path, reason)
    # the full images are readable mammograms
    assert load_image(full[0]).meta["modality"] == "MG"


def test_other_secondary_captures_are_skipped(tmp_path):
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    shot = _write(tmp_path / "shot.dcm", SECONDARY_CAPTURE, "MG", pixels,
                  SeriesDescription="Screen capture")
    other = _write(tmp_path / "ot.dcm", SECONDARY_CAPTURE, "OT", pixels,
                   SeriesDescription="full mammogram images")
    sel = select_inputs([tmp_path])
    assert sel.images == []
    reasons = dict(sel.skipped)
    assert "not described as a full mammogram" in reasons[shot]
    assert "modality OT" in reasons[other]


# ------------------------------------------------------------------------- DICOM by content
def test_suffixless_dicom_files_in_a_folder_are_found(tmp_path, synthetic):
    folder = tmp_path / "export"
    folder.mkdir()
    for i, src in enumerate(_mammograms(synthetic)):
        shutil.copy(src, folder / f"IM{i:04d}")
    (folder / "NOTES").write_text("not an image")
    (folder / ".hidden").write_bytes(_mammograms(synthetic)[0].read_bytes())
    expected = [folder / f"IM{i:04d}" for i in range(len(_mammograms(synthetic)))]
    assert collect_inputs([folder]) == expected
    sel = select_inputs([folder])
    assert sel.images == expected and sel.skipped == []
    assert is_dicom_file(expected[0]) and not is_dicom_file(folder / "NOTES")


def test_non_mammograms_are_skipped_with_reasons(tmp_path, synthetic):
    pixels = np.arange(32 * 24, dtype=np.uint16).reshape(32, 24)
    mammo = shutil.copy(_mammograms(synthetic)[0], tmp_path / "mammo.dcm")
    cases = {
        _write(tmp_path / "raw.dcm", MG_PROCESSING, "MG", pixels,
               PresentationIntentType="FOR PROCESSING"): "FOR PROCESSING",
        _write(tmp_path / "seg.dcm", SEG, "SEG", pixels.astype(np.uint8)): "Segmentation Storage",
        _write(tmp_path / "sr.dcm", COMPREHENSIVE_SR, "SR"): "Comprehensive SR",
        _write(tmp_path / "ct.dcm", CT, "CT", pixels): "Modality CT",
        _write(tmp_path / "dx.dcm", MG, "DX", pixels): "Modality DX",
    }
    sel = select_inputs([tmp_path])
    assert sel.images == [Path(mammo)]
    reasons = dict(sel.skipped)
    assert set(reasons) == set(cases)
    for path, word in cases.items():
        assert word in reasons[path], (path, reasons[path])
        assert mammogram_skip_reason(pydicom.dcmread(path)) == reasons[path]


def test_corrupt_dicom_is_not_skipped_silently(tmp_path, synthetic):
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(_mammograms(synthetic)[0].read_bytes()[:600])
    sel = select_inputs([tmp_path])
    assert sorted(sel.images) == sorted([corrupt, truncated]) and sel.skipped == []
    for path in (corrupt, truncated):
        with pytest.raises(InputError, match=path.name):
            load_image(path)


def test_raster_given_explicitly_is_processed(tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.arange(64 * 48, dtype=np.uint8).reshape(64, 48))
    assert select_inputs([png]).images == [png]
    assert select_inputs([str(tmp_path / "*.png")]).images == [png]
    assert select_inputs([tmp_path]).images == [png]  # folders keep their rasters
    missing = tmp_path / "missing.dcm"
    assert select_inputs([missing]).images == [missing]  # reported as not found by the reader


# ------------------------------------------------------------------------------- pixel spacing
@pytest.mark.parametrize(
    "attrs, spacing, source",
    [
        ({"PixelSpacing": [0.07, 0.07], "ImagerPixelSpacing": [0.085, 0.085],
          "EstimatedRadiographicMagnificationFactor": 1.1}, [0.07, 0.07], 0),
        ({"ImagerPixelSpacing": [0.088, 0.11], "EstimatedRadiographicMagnificationFactor": 1.1},
         [0.08, 0.1], 2),
        ({"ImagerPixelSpacing": [0.085, 0.085]}, [0.085, 0.085], 1),
        ({"ImagerPixelSpacing": [0.085, 0.085], "EstimatedRadiographicMagnificationFactor": 0},
         [0.085, 0.085], 1),
        ({"PixelSpacing": [0, 0.1], "ImagerPixelSpacing": [0.085, 0.085]}, [0.085, 0.085], 1),
    ],
)
def test_pixel_spacing_sources(tmp_path, attrs, spacing, source):
    path = _write(tmp_path / "a.dcm", MG, "MG", np.arange(12, dtype=np.uint16).reshape(3, 4),
                  **attrs)
    ds = pydicom.dcmread(path)
    info = pixel_spacing_info(ds)
    assert info["spacing_mm"] == pytest.approx(spacing) and info["source"] == SPACING_SOURCES[source]
    assert pixel_spacing(ds) == pytest.approx(spacing)
    meta = dicom_meta(ds, str(path))
    assert meta["pixel_spacing"] == pytest.approx(spacing)
    assert meta["pixel_spacing_source"] == SPACING_SOURCES[source]
    if source == 2:
        assert info["magnification"] == pytest.approx(1.1)


def test_no_pixel_spacing(tmp_path):
    ds = pydicom.dcmread(_write(tmp_path / "a.dcm", MG, "MG"))
    assert pixel_spacing_info(ds) is None and pixel_spacing(ds) is None
    assert dicom_meta(ds, "a")["pixel_spacing_source"] is None


# ------------------------------------------------------------------------ identity and studies
def test_meta_carries_the_image_identity(synthetic):
    path = _mammograms(synthetic)[0]
    ds = pydicom.dcmread(path)
    meta = load_image(path).meta
    assert meta["modality"] == "MG" and meta["sop_class_uid"] == MG
    assert meta["study_instance_uid"] == ds.StudyInstanceUID
    assert meta["series_instance_uid"] == ds.SeriesInstanceUID
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert meta["frame_of_reference_uid"] == ds.FrameOfReferenceUID
    assert meta["patient_id"] == ds.PatientID
    assert meta["laterality"] == ds.ImageLaterality and meta["view"] == ds.ViewPosition
    assert meta["pixel_spacing_source"] == "PixelSpacing"


def test_view_from_view_code_sequence(synthetic):
    ds = pydicom.dcmread(_mammograms(synthetic)[1], stop_before_pixels=True)
    del ds.ViewPosition
    assert image_view(ds) == "MLO"  # SNOMED CT code
    ds.ViewCodeSequence[0].CodeValue = "unknown"
    ds.ViewCodeSequence[0].CodeMeaning = "Cranio-Caudal"
    assert image_view(ds) == "CC"  # code meaning
    del ds.ViewCodeSequence
    assert image_view(ds) is None


def test_group_by_study_with_laterality_and_view(tmp_path, synthetic):
    files = _mammograms(synthetic)
    # a header without ViewPosition or ImageLaterality: the coded view and the series Laterality
    ds = pydicom.dcmread(files[0])
    expected_view = ds.ViewPosition
    del ds.ViewPosition, ds.ImageLaterality
    ds.Laterality = "L"
    ds.StudyInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5"
    coded = tmp_path / "coded"
    ds.save_as(coded)
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.ones((8, 8), np.uint8))
    groups = group_by_study([*files, coded, png])
    studies = {pydicom.dcmread(f).StudyInstanceUID for f in files}
    assert set(groups) == studies | {"1.2.3.4", None}
    for uid in studies:
        entries = groups[uid]
        assert sorted(e["view"] for e in entries) == ["CC", "MLO"]
        assert len({e["laterality"] for e in entries}) == 1
        assert entries[0]["laterality"] in ("L", "R")
        for e in entries:
            head = pydicom.dcmread(e["path"], stop_before_pixels=True)
            assert e["laterality"] == head.ImageLaterality and e["view"] == head.ViewPosition
    (c,) = groups["1.2.3.4"]
    assert c["path"] == coded and c["laterality"] == "L" and c["view"] == expected_view
    assert groups[None] == [{"path": png}]
