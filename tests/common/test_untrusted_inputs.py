"""Hostile and odd input files (issue "Safe with hostile files, honest with odd ones", part D).

One small test per reproduced problem: 11 saturated windows, 13 ``common.evaluate masks``/``boxes``
input validation, 14 pixel-count limit from the header, 16 ``common.evaluate`` output errors.
"""

from __future__ import annotations

import errno
import json
import logging
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from pydicom.uid import RLELossless
from test_dicom import phantom, write_dicom

from common.dicom import DEFAULT_MAX_PIXELS, load_image, pixel_limit
from common.errors import InputError
from common.evaluate import main
from common.io import atomic_write_json, atomic_write_png
from common.metrics import evaluate_boxes, evaluate_masks, read_prob_map
from common.preprocess import preprocess


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------ 11 saturated window
def test_11_window_saturating_everything_is_an_error_and_near_saturation_a_warning(tmp_path):
    stored = phantom()[0]
    white = write_dicom(tmp_path / "white.dcm", stored, "MONOCHROME1", WindowCenter=1e9, WindowWidth=100)
    with pytest.raises(InputError, match="constant image after windowing.*255") as e:
        preprocess(white)
    assert str(e.value).startswith(f"{white}: ")
    # the all-black twin keeps its error
    black = write_dicom(tmp_path / "black.dcm", stored, "MONOCHROME1", WindowCenter=-1e9, WindowWidth=100)
    with pytest.raises(InputError, match="hides the whole image"):
        preprocess(black)
    # background 0, every breast pixel 255: usable, but the record says the window is saturated
    binary = write_dicom(tmp_path / "binary.dcm", stored, WindowCenter=500, WindowWidth=100)
    rec = preprocess(binary).record
    assert any("saturated" in w and "100.0%" in w for w in rec["warnings"]), rec["warnings"]
    # a proper window: no saturation warning
    good = write_dicom(tmp_path / "good.dcm", stored, WindowCenter=2000, WindowWidth=2200)
    assert not any("saturated" in w for w in preprocess(good).record["warnings"])


# ------------------------------------------------------------------------------ 13 evaluate inputs
def _gt_pred(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    m = np.zeros((40, 50), np.uint8)
    m[10:20, 10:20] = 255
    atomic_write_png(gt_dir / "a.png", m)
    p = np.zeros((40, 50), np.float32)
    p[12:15, 12:15] = 0.9
    pred_dir.mkdir()
    np.save(pred_dir / "a.npy", p)
    return gt_dir, pred_dir


def test_13_gt_images_sharing_a_stem_are_an_error_naming_both(tmp_path, capsys):
    gt_dir, pred_dir = _gt_pred(tmp_path)
    atomic_write_png(gt_dir / "a.PNG", np.zeros((40, 50), np.uint8))
    out = tmp_path / "r.json"
    args = ["masks", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir), "--out", str(out)]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "a.png" in line and "a.PNG" in line and not out.exists()
    # the same in a canonical dataset
    coco = {
        "images": [
            {"id": 1, "stem": "a", "height": 40, "width": 50, "mask_file": "gt/a.png"},
            {"id": 2, "stem": "a", "height": 40, "width": 50, "mask_file": "other/a.png"},
        ],
        "annotations": [],
        "categories": [],
    }
    atomic_write_json(tmp_path / "calc.json", coco)
    args = ["masks", "--gt-json", str(tmp_path / "calc.json"), "--pred-dir", str(pred_dir)]
    assert main([*args, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "gt/a.png" in line and "other/a.png" in line and "'a'" in line


@pytest.mark.parametrize("dtype, top", [(np.uint8, 1), (np.uint16, 255), (np.uint16, 1)])
def test_13_binary_looking_probability_png_warns(tmp_path, caplog, dtype, top):
    m = np.zeros((20, 20), dtype)
    m[5:9, 5:9] = top
    path = tmp_path / "mask.png"
    atomic_write_png(path, m)
    with caplog.at_level(logging.WARNING, logger="common.evaluate"):
        p = read_prob_map(path)
    assert float(p.max()) == pytest.approx(top / np.iinfo(dtype).max)
    assert any("binary mask" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    # a real 8-bit probability map and a proper 0/255 mask: no warning
    caplog.clear()
    ok = np.zeros((20, 20), np.uint8)
    ok[5:9, 5:9] = 255
    ok[0, 0] = 77
    atomic_write_png(path, ok)
    with caplog.at_level(logging.WARNING, logger="common.evaluate"):
        read_prob_map(path)
    assert not caplog.records


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("boxes", ["--iou", "nan"]),
        ("masks", ["--iop", "nan"]),
        ("masks", ["--binarize", "2"]),
        ("masks", ["--binarize", "0"]),
        ("boxes", ["--fps", "1,nan"]),
        ("masks", ["--pixel-spacing", "-1"]),
    ],
)
def test_13_bad_thresholds_are_one_error_line_exit_2(tmp_path, capsys, mode, extra):
    gt_dir, pred_dir = _gt_pred(tmp_path)
    out = tmp_path / "r.json"
    if mode == "boxes":
        atomic_write_json(tmp_path / "gt.json", {"images": [{"id": 1}], "annotations": []})
        atomic_write_json(tmp_path / "pred.json", [])
        args = ["boxes", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")]
    else:
        args = ["masks", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir)]
    assert main([*args, *extra, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert extra[0] in line and not out.exists()


def test_13_api_refuses_nan_thresholds():
    with pytest.raises(ValueError, match="iou_thr"):
        evaluate_boxes({"images": [{"id": 1}], "annotations": []}, [], iou_thr=float("nan"))
    gt, prob = np.zeros((8, 8), bool), np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="binarize"):
        evaluate_masks({"a": gt}, {"a": prob}, binarize=2)
    with pytest.raises(ValueError, match="iop_thr"):
        evaluate_masks({"a": gt}, {"a": prob}, iop_thr=float("nan"))


@pytest.mark.parametrize(
    "pred, msg",
    [
        ({"image_id": 1, "bbox": "1234", "score": 0.5}, "bad bbox '1234'"),
        ({"image_id": True, "bbox": [0, 0, 5, 5], "score": 0.5}, "unknown image_id True"),
        ({"image_id": 1, "bbox": [0, 0, True, 5], "score": 0.5}, "bad bbox"),
        ({"image_id": 1, "bbox": [0, 0, 5, 5], "score": "0.5"}, "non-numeric score"),
        ({"image_id": 1, "bbox": [0, 0, 5, 5], "score": True}, "non-numeric score"),
        ({"image_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5, "category_id": True}, "category_id"),
    ],
)
def test_13_json_fields_of_the_wrong_type_are_input_errors(pred, msg):
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1}],
        "categories": [{"id": 1}],
    }
    with pytest.raises(InputError, match=msg) as e:
        evaluate_boxes(gt, [pred])
    assert "\n" not in str(e.value)
    # GT fields too
    bad_gt = json.loads(json.dumps(gt))
    bad_gt["annotations"][0]["bbox"] = "0055"
    with pytest.raises(InputError, match="bad bbox"):
        evaluate_boxes(bad_gt, [])
    bad_gt = json.loads(json.dumps(gt))
    bad_gt["annotations"][0]["image_id"] = True
    with pytest.raises(InputError, match="unknown image_id True"):
        evaluate_boxes(bad_gt, [])


# ------------------------------------------------------------------------------ 14 pixel-count limit
def test_14_huge_rle_dicom_refused_from_its_header_before_any_allocation(tmp_path):
    from pydicom.encaps import encapsulate

    # RLE header: 1 segment, starting at byte 64; then a tiny run
    frame = struct.pack("<16I", 1, 64, *([0] * 14)) + bytes([0x81, 0]) * 8
    path = write_dicom(
        tmp_path / "bomb.dcm",
        np.zeros((1, 1), np.uint16),
        transfer_syntax=RLELossless,
        Rows=65535,
        Columns=65535,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=encapsulate([frame]),
    )
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError) as e:
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 50e6
    msg = str(e.value)
    assert msg.startswith(f"{path}: image too large") and "\n" not in msg
    assert "65535 x 65535" in msg and f"{65535 * 65535:,}" in msg and f"{DEFAULT_MAX_PIXELS:,}" in msg


def _png_header_only(path, width, height, bit_depth=8, colour=0):
    """A PNG whose IHDR declares width x height, with a tiny (truncated) IDAT: never decoded."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100_000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))
    return path


def test_14_huge_png_and_tiff_refused_from_the_header_and_limit_is_configurable(
    tmp_path, monkeypatch
):
    import tifffile

    png = _png_header_only(tmp_path / "big.png", 30000, 30000)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="image too large") as e:
            load_image(png)
        with pytest.raises(InputError, match="image too large"):
            read_prob_map(png)  # the evaluation's reader too
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6
    assert "30000 x 30000" in str(e.value) and f"{30000 * 30000:,}" in str(e.value)

    # the limit: argument, environment variable, default
    tif = tmp_path / "small.tif"
    img = np.zeros((100, 120), np.uint16)
    img[10:50, 10:50] = 1000
    tifffile.imwrite(tif, img)
    assert load_image(tif).pixels.shape == (100, 120)
    with pytest.raises(InputError, match=r"12,000 pixel values, more than the limit of 5,000"):
        load_image(tif, max_pixels=5000)
    monkeypatch.setenv("DEEPLIMA_MAX_PIXELS", "5000")
    assert pixel_limit() == 5000
    with pytest.raises(InputError, match="limit of 5,000"):
        load_image(tif)
    monkeypatch.setenv("DEEPLIMA_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="DEEPLIMA_MAX_PIXELS must be a positive integer"):
        pixel_limit()
    monkeypatch.delenv("DEEPLIMA_MAX_PIXELS")
    assert pixel_limit() == DEFAULT_MAX_PIXELS


# ------------------------------------------------------------------------------ 16 evaluate output
def test_16_bad_output_and_bootstrap_are_one_error_line(tmp_path, capsys, monkeypatch):
    gt_dir, pred_dir = _gt_pred(tmp_path)
    base = ["masks", "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir)]
    folder = tmp_path / "reports"
    folder.mkdir()
    assert main([*base, "--out", str(folder)]) == 2
    assert "existing folder" in _one_error_line(capsys)
    out = tmp_path / "r.json"
    assert main([*base, "--bootstrap", "-5", "--out", str(out)]) == 2
    assert "--bootstrap" in _one_error_line(capsys)
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert main([*base, "--out", str(not_a_dir / "r.json")]) == 2
    assert "not a folder" in _one_error_line(capsys)

    # a full disk (or any write failure) while writing the report
    import common.evaluate as ev

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev, "atomic_write_json", full)
    assert main([*base, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line == f"error: {out}: cannot write the report (No space left on device)"
    with pytest.raises(ValueError, match="bootstrap"):
        evaluate_masks({"a": np.zeros((8, 8), bool)}, {"a": np.zeros((8, 8), np.float32)},
                       bootstrap=-5)


def test_read_png_checks_the_header_before_decoding(tmp_path, monkeypatch):
    """Masks and probability maps read through common.io.read_png obey the same pixel limit."""
    import cv2

    from common.io import read_png

    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), np.zeros((40, 50), np.uint8))
    assert read_png(path).shape == (40, 50)
    monkeypatch.setenv("DEEPLIMA_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match=r"mask\.png: image too large.*50 x 40"):
        read_png(path)
