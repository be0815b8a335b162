"""Reading, Modality/VOI LUT and the paper's window adjustment (common/dicom.py)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, generate_uid

from common.dicom import (
    WindowIntensity,
    apply_window,
    fallback_window,
    load_image,
    read_image,
    window_image,
)
from common.errors import InputError
from common.preprocess import preprocess

MG_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
)


def write_dicom(path, stored, photometric="MONOCHROME2", bits_stored=12, **tags):
    """Write a minimal valid single-frame greyscale DICOM; ``tags`` are set on the dataset."""
    stored = np.asarray(stored, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tags.pop("transfer_syntax", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MG_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PresentationIntentType = "FOR PRESENTATION"
    for key, value in tags.items():
        setattr(ds, key, value)
    if "PixelData" not in tags:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def phantom(h=96, w=80, maxv=4095, seed=0):
    """A half-disc 'breast' (values 1000..3000) on a 100 background, chest wall at column 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx * 1.2) ** 2 < (0.45 * h) ** 2
    img = np.full((h, w), 100.0)
    img[inside] = 1000 + 2000 * rng.random(inside.sum())
    return np.clip(np.rint(img), 0, maxv).astype(np.uint16), inside


# ----------------------------------------------------------------------------------------------------
# window maths
def test_window_hand_computed_values():
    # c=100, w=50: 75 -> 0, 125 -> 255, 100 -> 127.5 -> 128 (half up), 80 -> 25.5 -> 26,
    # 90 -> 76.5 -> 77, below/above clip to 0/255.
    x = np.array([[0, 75, 80, 90, 100, 125, 126, 1e6]], dtype=np.float32)
    assert apply_window(x, 100, 50).tolist() == [[0, 0, 26, 77, 128, 255, 255, 255]]
    t = WindowIntensity(center=100, width=50, invert=True)  # 125 -> 0, 75 -> 255
    assert t(x).tolist() == [[255, 255, 230, 179, 128, 0, 0, 0]]
    assert t(x).dtype == np.uint8


def test_window_is_pure_and_rejects_bad_width():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    before = x.copy()
    WindowIntensity(4, 4)(x)
    np.testing.assert_array_equal(x, before)
    for bad in (0, -3, float("nan")):
        with pytest.raises(ValueError):
            WindowIntensity(10, bad)


def test_modality_lut_applied(tmp_path):
    stored, _ = phantom()
    path = write_dicom(tmp_path / "a.dcm", stored, RescaleSlope=2, RescaleIntercept=-100)
    pixels, meta = read_image(path)
    assert pixels.dtype == np.float32 and pixels.shape == stored.shape
    np.testing.assert_array_equal(pixels, stored * 2.0 - 100)
    assert (
        meta["photometric"] == "MONOCHROME2" and meta["presentation_intent"] == "FOR PRESENTATION"
    )
    assert meta["bits_stored"] == 12


def test_metadata_kept(tmp_path):
    stored, _ = phantom()
    path = write_dicom(
        tmp_path / "m.dcm",
        stored,
        ImagerPixelSpacing=[0.07, 0.065],
        Laterality="L",
        ViewPosition="MLO",
    )
    _, meta = read_image(path)
    assert meta["pixel_spacing"] == [0.07, 0.065]
    assert meta["laterality"] == "L" and meta["view"] == "MLO"
    path = write_dicom(tmp_path / "n.dcm", stored, PixelSpacing=[0.1, 0.1], ImageLaterality="R")
    _, meta = read_image(path)
    assert meta["pixel_spacing"] == [0.1, 0.1] and meta["laterality"] == "R"


def test_file_window_used_and_first_of_multi_valued(tmp_path):
    stored, _ = phantom()
    single = write_dicom(tmp_path / "s.dcm", stored, WindowCenter=2000, WindowWidth=2000)
    multi = write_dicom(
        tmp_path / "m.dcm", stored, WindowCenter=[2000, 500], WindowWidth=[2000, 100]
    )
    a, rec_a = window_image(load_image(single))
    b, rec_b = window_image(load_image(multi))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, apply_window(stored.astype(np.float32), 2000, 2000))
    assert rec_a["source"] == rec_b["source"] == "file"
    assert (rec_b["center"], rec_b["width"]) == (2000, 2000)
    assert any("used the first" in w for w in rec_b["warnings"])


def test_monochrome1_and_monochrome2_give_the_same_image(tmp_path):
    stored, _ = phantom(maxv=4095)
    c, w = 2010.5, 2501
    p2 = write_dicom(tmp_path / "m2.dcm", stored, WindowCenter=c, WindowWidth=w)
    # the same acquisition stored inverted: x' = 4095 - x, window centre 4095 - c, same width
    p1 = write_dicom(
        tmp_path / "m1.dcm",
        4095 - stored,
        photometric="MONOCHROME1",
        WindowCenter=4095 - c,
        WindowWidth=w,
    )
    r1, r2 = preprocess(p1), preprocess(p2)
    np.testing.assert_array_equal(r1.image, r2.image)
    np.testing.assert_array_equal(r1.breast_mask, r2.breast_mask)
    assert r1.record["window"]["invert"] and not r2.record["window"]["invert"]
    # background is dark (0) in both
    assert r1.image[0, -1] == 0


def test_monochrome1_fallback_matches_monochrome2(tmp_path):
    stored, _ = phantom()
    p2 = write_dicom(tmp_path / "m2.dcm", stored)
    p1 = write_dicom(tmp_path / "m1.dcm", 4095 - stored, photometric="MONOCHROME1")
    r1, r2 = preprocess(p1), preprocess(p2)
    np.testing.assert_array_equal(r1.image, r2.image)
    assert r1.record["window"]["source"] == "fallback"


def _voi_lut_item(first_map, data, bits=16):
    item = Dataset()
    item.LUTDescriptor = [len(data), first_map, bits]
    item.LUTData = [int(v) for v in data]
    item["LUTData"].VR = "US"
    return item


def test_voi_lut_sequence_honoured_and_rescaled(tmp_path):
    stored = np.array([[0, 10, 20, 30], [40, 50, 60, 70]], dtype=np.uint16)
    stored = np.repeat(np.repeat(stored, 8, axis=0), 8, axis=1)
    # LUT over stored values 10..60: output 100 + 4 * (x - 10), i.e. 100..300; outside it clamps
    lut = [100 + 4 * i for i in range(51)]
    path = write_dicom(
        tmp_path / "voi.dcm",
        stored,
        VOILUTSequence=Sequence([_voi_lut_item(10, lut)]),
        WindowCenter=5000,  # a window too: the VOI LUT wins (pydicom prefer_lut)
        WindowWidth=10,
    )
    out, rec = window_image(load_image(path))
    assert rec["source"] == "voi_lut_sequence"
    assert rec["lut_output_range"] == [100.0, 300.0]
    # output range 100..300 -> 0..255: x=10 -> 0, x=35 -> 200 -> 127.5 -> 128, x=60 -> 255
    expected = {0: 0, 10: 0, 20: 51, 30: 102, 40: 153, 50: 204, 60: 255, 70: 255}
    for value, grey in expected.items():
        assert np.all(out[stored == value] == grey), value


def test_fallback_window_with_warning(tmp_path):
    stored, inside = phantom()
    path = write_dicom(tmp_path / "nowin.dcm", stored)
    out, rec = window_image(load_image(path))
    assert rec["source"] == "fallback"
    assert any("fallback" in w for w in rec["warnings"])
    assert np.all(out[~inside] == 0)  # background (100) below the window
    assert np.all(out[inside] > 0)  # every tissue pixel (>= 1000) visible
    assert out[inside].max() == 255


def test_fallback_window_noisy_background_maps_to_zero():
    rng = np.random.default_rng(1)
    img = rng.normal(500, 20, (200, 160)).astype(np.float32)
    img[40:160, :90] = rng.uniform(2000, 3000, (120, 90))
    c, w = fallback_window(img)
    out = apply_window(img, c, w)
    assert (out[:30] == 0).mean() > 0.999
    assert (out[40:160, :90] > 0).all()


def test_png_and_tiff_input(tmp_path):
    import cv2
    import tifffile

    stored, inside = phantom()
    cv2.imwrite(str(tmp_path / "a.png"), stored)
    tifffile.imwrite(tmp_path / "a.tif", stored)
    a, b = preprocess(tmp_path / "a.png"), preprocess(tmp_path / "a.tif")
    np.testing.assert_array_equal(a.image, b.image)
    assert a.record["window"]["source"] == "fallback"
    assert a.record["meta"]["rows"] == stored.shape[0]


# ----------------------------------------------------------------------------------------------------
# errors: one InputError naming the file
def _assert_input_error(path, *words):
    with pytest.raises(InputError) as err:
        preprocess(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for word in words:
        assert word.lower() in msg.lower(), msg
    return msg


def test_missing_file(tmp_path):
    _assert_input_error(tmp_path / "nope.dcm", "not found")


def test_non_dicom_file(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("hello, I am not a DICOM file\n" * 20)
    _assert_input_error(p, "not a DICOM")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.dcm"
    p.write_bytes(b"")
    _assert_input_error(p, "empty")


def test_truncated_pixel_data(tmp_path):
    stored, _ = phantom()
    p = write_dicom(tmp_path / "t.dcm", stored, WindowCenter=2000, WindowWidth=2000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 3000])
    _assert_input_error(p, "truncated")


def test_truncated_header(tmp_path):
    stored, _ = phantom()
    p = write_dicom(tmp_path / "h.dcm", stored)
    p.write_bytes(p.read_bytes()[:200])
    _assert_input_error(p, "truncated")


def test_malformed_window_tag(tmp_path):
    stored, _ = phantom()
    p = write_dicom(tmp_path / "w.dcm", stored, WindowCenter="+2000", WindowWidth=2000)
    data = p.read_bytes()
    # Same length, so the element stays well-formed but its value is no longer a number. The "+"
    # makes the value unique in the file (a random UID may hold the digits "2000").
    assert data.count(b"+2000") == 1
    p.write_bytes(data.replace(b"+2000", b"abcde", 1))
    _assert_input_error(p, "malformed")


def test_no_pixel_data(tmp_path):
    stored, _ = phantom()
    p = write_dicom(tmp_path / "nopix.dcm", stored)
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    _assert_input_error(p, "without pixel data")


def test_for_processing_rejected(tmp_path):
    stored, _ = phantom()
    p = write_dicom(tmp_path / "raw.dcm", stored, PresentationIntentType="FOR PROCESSING")
    _assert_input_error(p, "FOR PROCESSING")


def test_unsupported_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate

    stored, _ = phantom()
    p = write_dicom(
        tmp_path / "mpeg.dcm",
        stored,
        transfer_syntax=MPEG2MPML,
        PixelData=encapsulate([b"\x00" * 64]),
    )
    _assert_input_error(p, "unsupported", "MPEG2")


def test_constant_image(tmp_path):
    p = write_dicom(tmp_path / "flat.dcm", np.full((32, 32), 7, np.uint16))
    _assert_input_error(p, "constant")


def test_colour_and_multiframe_rejected(tmp_path):
    import cv2

    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    cv2.imwrite(str(tmp_path / "c.png"), rgb)
    _assert_input_error(tmp_path / "c.png", "colour")
    stored, _ = phantom()
    two = np.concatenate([stored, stored])
    p = write_dicom(tmp_path / "mf.dcm", two[: stored.shape[0]], NumberOfFrames=2)
    ds = pydicom.dcmread(p)
    ds.PixelData = two.tobytes()
    ds.save_as(p)
    _assert_input_error(p, "multi-frame")


def test_window_hiding_everything(tmp_path):
    stored, _ = phantom()
    p = write_dicom(tmp_path / "dark.dcm", stored, WindowCenter=60000, WindowWidth=10)
    _assert_input_error(p, "window")
