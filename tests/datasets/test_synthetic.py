"""Tests of the synthetic DICOM mammogram generator (small images, a few seconds in all)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from common.io import read_png, sha256_file
from datasets.canonical import CALC_TYPES
from datasets.synthetic import MASS_SHAPES, MG_FOR_PRESENTATION, generate, main, render_image

H, W = 512, 416
SEED = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(
        tmp_path_factory.mktemp("syn") / "a", n=4, seed=SEED, height=H, width=W, progress=False
    )


def _load(root: Path):
    masses = json.loads((root / "masses.json").read_text())
    calcs = json.loads((root / "calcifications.json").read_text())
    manifest = {im["stem"]: im for im in json.loads((root / "manifest.json").read_text())["images"]}
    return masses, calcs, manifest


def _windowed(ds, man: dict) -> np.ndarray:
    """Paper window (c - w/2 -> 0, c + w/2 -> 255), MONOCHROME1 inverted; float (H, W)."""
    win = man["window"]
    c, w = win["center"][0], win["width"][0]
    u = np.clip((apply_modality_lut(ds.pixel_array, ds) - (c - w / 2)) / w * 255, 0, 255)
    return 255 - u if ds.PhotometricInterpretation == "MONOCHROME1" else u


def _isolated_dot_counts(stored: np.ndarray, thr: float) -> np.ndarray:
    """Per column: pixels whose value differs from every 8-neighbour by more than ``thr``."""
    a = np.pad(stored.astype(np.int64), 1, mode="edge")
    h, w = stored.shape
    centre = a[1:-1, 1:-1]
    mins = np.full(stored.shape, np.iinfo(np.int64).max)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                mins = np.minimum(
                    mins, np.abs(centre - a[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
                )
    return (mins > thr).sum(axis=0)


def test_outputs_exist(dataset):
    masses, calcs, manifest = _load(dataset)
    assert len(masses["images"]) == 8 and [im["id"] for im in masses["images"]] == list(range(1, 9))
    assert (
        masses["categories"][0]["name"] == "mass"
        and calcs["categories"][0]["name"] == "calcification"
    )
    assert [im["stem"] for im in calcs["images"]] == [im["stem"] for im in masses["images"]]
    for im in calcs["images"]:
        assert (dataset / im["file_name"]).is_file()
        assert (dataset / im["mask_file"]).is_file()
        assert (dataset / "breast_masks" / f"{im['stem']}.png").is_file()
        assert im["stem"] in manifest
        assert im["height"] == H and im["width"] == W
        assert im["laterality"] in ("L", "R") and im["view"] in ("CC", "MLO")
        assert im["density"] in (1, 2, 3, 4) and len(im["pixel_spacing"]) == 2
    for key in (
        "bits_stored",
        "photometric",
        "window",
        "rescale_slope",
        "rescale_intercept",
        "artifact_columns",
        "density",
        "view",
        "laterality",
        "masses",
        "calcifications",
        "text_boxes",
    ):
        assert all(key in m for m in manifest.values()), key
    assert (dataset / "split.json").is_file()
    # every study is one breast seen in CC and MLO
    views = Counter((im["patient_id"], im["laterality"]) for im in masses["images"])
    assert set(views.values()) == {2}


def test_dicom_tags(dataset):
    masses, _, manifest = _load(dataset)
    sop_uids, studies = set(), {}
    for im in masses["images"]:
        ds = pydicom.dcmread(dataset / im["file_name"])
        man = manifest[im["stem"]]
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == MG_FOR_PRESENTATION == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PatientID == im["patient_id"]
        assert ds.ImageLaterality == im["laterality"] and ds.ViewPosition == im["view"]
        assert (ds.Rows, ds.Columns) == (H, W) and ds.SamplesPerPixel == 1
        assert ds.BitsAllocated == 16 and ds.BitsStored == man["bits_stored"] in (12, 14, 16)
        assert ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
        assert ds.PhotometricInterpretation == man["photometric"]
        lut_shape = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}
        assert ds.PresentationLUTShape == lut_shape[ds.PhotometricInterpretation]
        meaning = {"CC": "cranio-caudal", "MLO": "medio-lateral oblique"}[im["view"]]
        assert ds.ViewCodeSequence[0].CodeMeaning == meaning
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(im["pixel_spacing"])
        # the DX/MG pixel module allows no other rescale: stored values are modality values
        assert float(ds.RescaleSlope) == man["rescale_slope"] == 1
        assert float(ds.RescaleIntercept) == man["rescale_intercept"] == 0
        px = ds.pixel_array
        assert px.shape == (H, W) and px.dtype == np.uint16
        assert int(px.max()) <= (1 << ds.BitsStored) - 1
        mode = man["window"]["mode"]
        if mode == "voi_lut":
            assert "WindowCenter" not in ds and "WindowWidth" not in ds
            first = int(ds.VOILUTSequence[0].LUTDescriptor[1])
            c, w = man["window"]["center"][0], man["window"]["width"][0]
            assert first == max(0, int(np.floor(c - w / 2)))
        elif mode == "single":
            assert float(ds.WindowCenter) == pytest.approx(man["window"]["center"][0])
        else:
            assert len(ds.WindowCenter) == len(ds.WindowWidth) == 2
            assert float(ds.WindowWidth[0]) == pytest.approx(man["window"]["width"][0])
        assert ds.SOPInstanceUID.startswith("2.25.") and ds.SOPInstanceUID not in sop_uids
        sop_uids.add(ds.SOPInstanceUID)
        assert studies.setdefault(im["patient_id"], ds.StudyInstanceUID) == ds.StudyInstanceUID
    assert len(set(studies.values())) == len(studies)


def test_window_shows_breast_and_calcifications(dataset):
    _, calcs, manifest = _load(dataset)
    checked = 0
    for im in calcs["images"]:
        man = manifest[im["stem"]]
        u = _windowed(pydicom.dcmread(dataset / im["file_name"]), man)
        breast = read_png(dataset / "breast_masks" / f"{im['stem']}.png") > 0
        calc = read_png(dataset / im["mask_file"]) > 0
        # the breast is what survives the window: background (bar text and artifact) goes to 0
        assert (u[breast] > 0).mean() > 0.99
        background = ~breast
        for box in man["text_boxes"]:
            x, y, w, h = box["bbox"]
            background[y : y + h, x : x + w] = False
        background[:, man["artifact_columns"]] = False
        assert (u[background] > 0).mean() < 0.001
        assert 20 < np.median(u[breast]) < 220
        for ann in (a for a in calcs["annotations"] if a["image_id"] == im["id"]):
            if ann["calc_type"] != "dot":  # a dot's pixels are the calcification itself
                continue
            x, y, w, h = (int(v) for v in ann["bbox"])
            win = np.s_[max(0, y - 8) : y + h + 8, max(0, x - 8) : x + w + 8]
            around = u[win][breast[win] & ~calc[win]]
            px, py = ann["point"]
            assert u[py, px] > np.median(around) + 30  # visible after windowing
            checked += 1
    assert checked > 0


def test_same_seed_same_bytes(dataset, tmp_path):
    again = generate(tmp_path / "b", n=4, seed=SEED, height=H, width=W, progress=False)
    other = generate(tmp_path / "c", n=4, seed=SEED + 1, height=H, width=W, progress=False)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert sha256_file(dataset / rel) == sha256_file(again / rel), rel
    first = sorted(dataset.glob("images/*.dcm"))[0]
    other_first = sorted(other.glob("images/*.dcm"))[0]
    assert sha256_file(first) != sha256_file(other_first)
    assert pydicom.dcmread(first).StudyInstanceUID != pydicom.dcmread(other_first).StudyInstanceUID


def test_masks_match_images(dataset):
    _, calcs, _ = _load(dataset)
    for im in calcs["images"]:
        breast = read_png(dataset / "breast_masks" / f"{im['stem']}.png")
        calc = read_png(dataset / im["mask_file"])
        assert breast.shape == calc.shape == (H, W)
        assert breast.dtype == calc.dtype == np.uint8
        assert set(np.unique(breast)) <= {0, 255} and set(np.unique(calc)) <= {0, 255}
        assert not (calc & ~breast).any()  # calcifications lie inside the breast
        n, _ = cv2.connectedComponents(breast, connectivity=8)
        assert n == 2  # one breast region


def test_mass_boxes_inside_image_and_breast(dataset):
    masses, _, manifest = _load(dataset)
    assert masses["annotations"]
    for ann in masses["annotations"]:
        im = masses["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= W and y + h <= H
        assert (
            0.015 * H <= max(w, h) <= 0.1 * H
        )  # diameters of 2-6 % of the height (oval, irregular)
        footprint = np.zeros((H, W), np.uint8)
        for poly in ann["segmentation"]:
            cv2.fillPoly(footprint, [np.array(poly, np.int32).reshape(-1, 2)], 1)
        breast = read_png(dataset / "breast_masks" / f"{im['stem']}.png") > 0
        assert breast[footprint > 0].all()
        fx, fy, fw, fh = cv2.boundingRect(footprint)
        assert [fx, fy, fw, fh] == [x, y, w, h]  # the box is the footprint's tight box
        assert breast[int(y + h / 2), int(x + w / 2)]
        assert ann["shape"] in MASS_SHAPES
        assert ann["contrast"] > 0 and ann["iscrowd"] == 0 and ann["category_id"] == 1
    assert sum(len(m["masses"]) for m in manifest.values()) == len(masses["annotations"])


def test_calc_components_match_annotations(dataset):
    _, calcs, manifest = _load(dataset)
    for im in calcs["images"]:
        mask = read_png(dataset / im["mask_file"]) > 0
        anns = [a for a in calcs["annotations"] if a["image_id"] == im["id"]]
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            mask.astype(np.uint8), connectivity=8
        )
        assert n - 1 == len(anns)
        seen = set()
        for a in anns:
            px, py = a["point"]
            k = labels[py, px]
            assert k > 0 and k not in seen  # the point lies in its own component
            seen.add(k)
            assert [float(v) for v in stats[k][:4]] == a["bbox"]
            assert a["area"] == stats[k][4]
            assert a["calc_type"] in CALC_TYPES
        # every drawn record type shows up as components of that type, and nothing else
        drawn = {r["type"] for r in manifest[im["stem"]]["calcifications"]}
        assert {a["calc_type"] for a in anns} == drawn
        n_vessel = sum(r["type"] == "vessel" for r in manifest[im["stem"]]["calcifications"])
        assert sum(a["calc_type"] == "vessel" for a in anns) == n_vessel  # one region per vessel
    # dot components are at most 1 mm across (12 px at 85 µm; fewer at this image's spacing); large
    # regions are much larger
    dots = [a for a in calcs["annotations"] if a["calc_type"] == "dot"]
    spacing = {im["id"]: im["pixel_spacing"][0] for im in calcs["images"]}
    assert all(max(a["bbox"][2:]) <= max(1, round(1.0 / spacing[a["image_id"]])) for a in dots)
    assert min(a["area"] for a in calcs["annotations"] if a["calc_type"] == "large") > 50


def _check_dotted_columns(root: Path) -> int:
    """Every recorded artifact column, and no other, carries many isolated 1-pixel dots."""
    masses, _, manifest = _load(root)
    with_artifact = 0
    for im in masses["images"]:
        man = manifest[im["stem"]]
        px = pydicom.dcmread(root / im["file_name"]).pixel_array
        counts = _isolated_dot_counts(px, 0.2 * man["raw_span"])
        if man["artifact_columns"]:
            (col,) = man["artifact_columns"]
            with_artifact += 1
            assert int(np.argmax(counts)) == col
            assert counts[col] > H / 20
            assert np.delete(counts, col).max() < counts[col] / 4
        else:
            assert counts.max() < H / 20
    return with_artifact


def test_artifact_column_is_the_only_dotted_column(dataset):
    _check_dotted_columns(dataset)


def test_forced_artifact_changes_only_its_column(tmp_path):
    kw = dict(n=2, seed=5, height=H, width=W, views=("CC",), progress=False)
    on = generate(tmp_path / "on", artifact=True, **kw)
    off = generate(tmp_path / "off", artifact=False, **kw)
    assert _check_dotted_columns(on) == 2 and _check_dotted_columns(off) == 0
    for f in sorted(on.glob("images/*.dcm")):
        a = pydicom.dcmread(f).pixel_array.astype(int)
        b = pydicom.dcmread(off / "images" / f.name).pixel_array.astype(int)
        (col,) = _load(on)[2][f.stem]["artifact_columns"]
        assert np.flatnonzero((a != b).any(axis=0)).tolist() == [col]
        rows = np.flatnonzero(a[:, col] != b[:, col])
        assert len(rows) > H / 20 and np.diff(rows).min() >= 2  # isolated 1-pixel dots
        for name in ("calc_masks", "breast_masks"):  # the artifact is not part of any truth
            png = f"{name}/{f.stem}.png"
            assert sha256_file(on / png) == sha256_file(off / png)


def test_monochrome1_is_inverted(tmp_path):
    kw = dict(n=1, seed=3, height=H, width=W, views=("MLO",), bits_stored=14, progress=False)
    m1 = generate(tmp_path / "m1", photometric="MONOCHROME1", **kw)
    m2 = generate(tmp_path / "m2", photometric="MONOCHROME2", **kw)
    (f1,) = sorted(m1.glob("images/*.dcm"))
    d1, d2 = pydicom.dcmread(f1), pydicom.dcmread(m2 / "images" / f1.name)
    assert (
        d1.PhotometricInterpretation == "MONOCHROME1"
        and d2.PhotometricInterpretation == "MONOCHROME2"
    )
    a1, a2 = d1.pixel_array.astype(int), d2.pixel_array.astype(int)
    assert np.array_equal(a1, (1 << 14) - 1 - a2)
    breast = read_png(m1 / "breast_masks" / f"{f1.stem}.png") > 0
    assert a1[breast].mean() < a1[~breast].mean()  # MONOCHROME1: tissue stored dark
    assert a2[breast].mean() > a2[~breast].mean()
    man1, man2 = _load(m1)[2][f1.stem], _load(m2)[2][f1.stem]
    # the same picture after windowing
    assert np.abs(_windowed(d1, man1) - _windowed(d2, man2)).max() < 1.0


def test_text_outside_breast(dataset):
    masses, _, manifest = _load(dataset)
    for im in masses["images"]:
        man = manifest[im["stem"]]
        breast = read_png(dataset / "breast_masks" / f"{im['stem']}.png") > 0
        assert len(man["text_boxes"]) >= 2  # at least the view label and the laterality marker fit
        for box in man["text_boxes"]:
            x, y, w, h = box["bbox"]
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert not breast[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2].any()
        # text is burned in: bright (MONOCHROME2 sense) pixels inside the boxes
        px = pydicom.dcmread(dataset / im["file_name"]).pixel_array.astype(float)
        if man["photometric"] == "MONOCHROME1":
            px = (1 << man["bits_stored"]) - 1 - px
        x, y, w, h = man["text_boxes"][0]["bbox"]
        assert px[y : y + h, x : x + w].max() > man["raw_base"] + 0.9 * man["raw_span"]


def test_split_is_patient_disjoint(dataset):
    masses, calcs, _ = _load(dataset)
    split = json.loads((dataset / "split.json").read_text())
    groups = [set(split["patients"][s]) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    by_patient = {}
    for im in masses["images"]:
        assert by_patient.setdefault(im["patient_id"], im["split"]) == im["split"]
        assert im["patient_id"] in split["patients"][im["split"]]
        assert split["images"][im["file_name"]]["sha256"] == sha256_file(dataset / im["file_name"])
    assert [im["split"] for im in calcs["images"]] == [im["split"] for im in masses["images"]]


def test_cli_small_image(tmp_path, capsys):
    assert (
        main(
            [
                "--out",
                str(tmp_path / "cli"),
                "--n",
                "1",
                "--seed",
                "9",
                "--height",
                "256",
                "--width",
                "208",
                "--quiet",
            ]
        )
        == 0
    )
    masses, calcs, _ = _load(tmp_path / "cli")
    assert len(masses["images"]) == 2
    ds = pydicom.dcmread(tmp_path / "cli" / masses["images"][0]["file_name"])
    assert ds.pixel_array.shape == (256, 208)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, n=1, height=64, width=64, progress=False)
    with pytest.raises(ValueError):
        generate(tmp_path, n=1, height=H, width=W, bits_stored=10, progress=False)


def test_variety_over_many_images():
    """Over a few dozen small images every lesion kind and pixel-module choice shows up."""
    shapes, types, lesion_free, seen = set(), set(), 0, Counter()
    for k in range(24):
        lat, view = "LR"[k % 2], ("CC", "MLO")[k // 2 % 2]
        img = render_image(11, k, k % 2, 256, 208, lat, "ABCD"[k % 4], view)
        assert img["signal"].shape == (256, 208) and img["signal"].dtype == np.float32
        shapes |= {m["shape"] for m in img["masses"]}
        types |= {r["type"] for r in img["calc_records"]}
        lesion_free += img["params"]["lesion_free"]
        p = img["params"]
        seen.update([p["photometric"], p["window_mode"], f"bits{p['bits_stored']}"])
        seen.update(["artifact"] if p["artifact_columns"] else [])
    assert shapes == set(MASS_SHAPES) and types == set(CALC_TYPES)
    assert 0 < lesion_free < 24
    assert set(seen) == {
        "MONOCHROME1",
        "MONOCHROME2",
        "single",
        "multi",
        "voi_lut",
        "bits12",
        "bits14",
        "bits16",
        "artifact",
    }
