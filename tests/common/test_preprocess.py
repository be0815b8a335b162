"""Breast region, Eq. 5 artifact removal, laterality and the pre-processing chain + CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from common.artifacts import (
    artifact_profile,
    find_artifact_columns,
    min_neighbour_difference,
    remove_artifact_columns,
    remove_artifacts,
)
from common.breast import breast_mask, extract_breast
from common.errors import InputError
from common.laterality import (
    chest_wall_side,
    flip_boxes_xywh,
    flip_boxes_xyxy,
    flip_image,
    unflip_boxes_xywh,
    unflip_boxes_xyxy,
    unflip_mask,
    unflip_points,
)
from common.preprocess import Preprocessed, main, preprocess

REPO = Path(__file__).resolve().parents[2]


def breast_image(h=400, w=320, seed=0):
    """uint8 smooth 'breast' (half ellipse, chest wall at column 0) with mild texture; bool truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + (xx / (0.7 * w)) ** 2 < 1
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)
    img = 120 + 40 * texture / texture.std() + 3 * rng.normal(0, 1, (h, w))
    img = np.where(inside, np.clip(img, 30, 230), 0).astype(np.uint8)
    return img, inside


def add_column_artifact(img, x, mask, seed=0, step=5):
    """Isolated bright/dark 1-pixel dots every ``step`` rows inside ``mask`` on column x."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    rows = np.flatnonzero(mask[:, x])[::step]
    signs = rng.choice([-1, 1], rows.size)
    out[rows, x] = np.clip(
        out[rows, x].astype(int) + signs * rng.integers(60, 100, rows.size), 0, 255
    )
    return out, rows


# ----------------------------------------------------------------------------------------------------
# Eq. 5
def test_min_neighbour_difference_hand_computed():
    u = np.full((5, 5), 10, np.uint8)
    u[2, 2] = 50  # isolated dot: min |50 - 10| = 40
    u[0, 4] = 13  # corner pixel: replicated border -> a neighbour equals itself -> 0
    d = min_neighbour_difference(u)
    assert d[2, 2] == 40 and d[0, 4] == 0
    assert d.sum() == 40
    np.testing.assert_array_equal(artifact_profile(u), [0, 0, 40, 0, 0])


def test_artifact_column_found_exactly_and_no_other_pixel_changes():
    img, inside = breast_image()
    x = 150
    dirty, rows = add_column_artifact(img, x, inside)
    fixed, cols, details = remove_artifacts(dirty, inside)
    assert cols == [x]
    changed = fixed != dirty
    assert changed[:, x].sum() >= 0.9 * rows.size
    assert not changed[:, np.arange(img.shape[1]) != x].any()
    # the repaired dots are back near their neighbourhood
    assert np.abs(fixed[rows, x].astype(int) - img[rows, x]).mean() < 20
    assert details["excess"][0] > details["threshold"]


def test_artifact_repair_is_the_neighbourhood_median():
    u = np.arange(30, dtype=np.uint8).reshape(5, 6) * 3
    out = remove_artifact_columns(u, [2])
    y = 2
    neigh = [u[y + dy, 2 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    s = sorted(int(v) for v in neigh)
    assert out[y, 2] == (s[3] + s[4] + 1) // 2
    np.testing.assert_array_equal(np.delete(out, 2, axis=1), np.delete(u, 2, axis=1))
    # a mask keeps pixels outside it unchanged
    mask = np.zeros(u.shape, bool)
    mask[:2] = True
    out = remove_artifact_columns(u, [2], mask)
    np.testing.assert_array_equal(out[2:], u[2:])


def test_artifact_median_rounds_half_up():
    # neighbours of the centre: 10..17, the 4th and 5th smallest are 13 and 14 (an odd sum): the
    # repair is 14, not the truncated 13
    u = np.array([[10, 11, 12], [16, 200, 17], [13, 14, 15]], np.uint8)
    assert remove_artifact_columns(u, [1])[1, 1] == 14


def test_artifact_excess_must_beat_the_floor_strictly():
    # a flat profile has no spread, so the threshold is the 400 floor: an excess of exactly 400 is
    # not an artifact, one just above it is
    h = np.full(60, 1000.0)
    h[30] += 400
    cols, details = find_artifact_columns(h)
    assert cols == [] and details["threshold"] == 400.0 and details["spread"] == 0.0
    h[30] += 0.5
    assert find_artifact_columns(h)[0] == [30]
    assert find_artifact_columns(h, min_excess=401)[0] == []
    # on a noisy profile the threshold is 10 robust standard deviations, above the floor: an
    # excess of 800 is then noise, 1800 is not
    h = 1000 + np.random.default_rng(0).normal(0, 100, 200)
    h[100] += 800
    cols, details = find_artifact_columns(h)
    assert cols == [] and 800 < details["threshold"] == pytest.approx(10 * details["spread"])
    assert find_artifact_columns(h, k_spread=5)[0] == [100]
    h[100] += 1000
    assert find_artifact_columns(h)[0] == [100]


def test_artifact_pulse_must_be_sharp_inside_and_few():
    # a pulse must stand 4 times above the excess beside it: 1200 over a 300 shoulder is, 1199 not
    h = np.full(200, 1000.0)
    h[99] += 300
    h[100] += 1200
    assert find_artifact_columns(h)[0] == [100]
    h[100] -= 1
    assert find_artifact_columns(h)[0] == []
    # the first and last columns are never reported (their neighbours are edge copies)
    for border in (0, 199):
        h = np.full(200, 1000.0)
        h[border] += 3000
        assert find_artifact_columns(h)[0] == []
    # up to max_columns (8) pulses are artifacts; more means a periodic texture: none is reported
    h = np.full(200, 1000.0)
    h[10:170:20] += 3000
    assert find_artifact_columns(h)[0] == list(range(10, 170, 20))
    h[170] += 3000
    assert find_artifact_columns(h)[0] == []


def test_two_artifact_columns():
    img, inside = breast_image(seed=1)
    dirty, _ = add_column_artifact(img, 90, inside, seed=1)
    dirty, _ = add_column_artifact(dirty, 160, inside, seed=2)
    _, cols, _ = remove_artifacts(dirty, inside)
    assert cols == [90, 160]


def test_calcification_dots_do_not_trigger():
    img, inside = breast_image(seed=2)
    rng = np.random.default_rng(3)
    dots = img.copy()
    ys, xs = np.nonzero(inside)
    pick = rng.choice(ys.size, 60, replace=False)
    dots[ys[pick], xs[pick]] = 255  # 60 isolated bright 1-px calcifications
    for y in (100, 140, 180, 220, 260):  # a cluster: five dots on one column
        dots[y, 120] = 255
    blobs = dots.copy()
    for y, x in zip(ys[pick[:20]], xs[pick[:20]]):
        cv2.circle(blobs, (int(x), int(y)), 2, 250, -1)  # 5-px calcifications
    for u in (dots, blobs):
        out, cols, _ = remove_artifacts(u, inside)
        assert cols == []
        np.testing.assert_array_equal(out, u)


def test_wide_vertical_structures_are_not_artifacts():
    h = np.full(200, 1000.0)
    h[50:55] += 5000  # a 5-column band (an edge), not a 1-pixel line
    h[120] += 3000
    cols, _ = find_artifact_columns(h)
    assert cols == [120]


# ----------------------------------------------------------------------------------------------------
# breast region
def test_breast_mask_removes_text_and_markers():
    img, inside = breast_image()
    u = img.copy()
    cv2.putText(u, "L MLO", (200, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
    cv2.rectangle(u, (290, 360), (310, 380), 200, -1)  # marker
    # a label touching the breast through a 1-pixel bridge
    cv2.rectangle(u, (250, 180), (300, 220), 220, -1)
    out, mask = extract_breast(u)
    iou = (mask & inside).sum() / (mask | inside).sum()
    assert iou > 0.97
    assert not mask[:45, 190:].any() and not mask[355:385, 285:315].any()
    assert (out[~mask] == 0).all()
    np.testing.assert_array_equal(out[mask], u[mask])


def test_breast_mask_fills_holes_and_handles_large_images():
    img, inside = breast_image(h=2400, w=1900)
    img[1000:1010, 300:310] = 0  # a dark hole inside the breast
    mask = breast_mask(img)
    assert mask[1005, 305]
    iou = (mask & inside).sum() / (mask | inside).sum()
    assert iou > 0.995


def test_breast_mask_ignores_flecks_that_come_first_in_raster_order():
    # connected-component labels follow raster order, so a fleck above the breast's top row gets
    # label 1: the breast must still be chosen by area. A big fleck in the top right corner survives
    # the opening; a small one 1 row above the breast's top is removed by the opening but lies
    # within the band where the shaved-off boundary is recovered.
    img, inside = breast_image(h=1000, w=800)
    ys, xs = np.nonzero(inside)
    top = ys.min()
    left = xs[ys == top].min()
    assert top > 20
    u = img.copy()
    u[2:14, 700:712] = 180
    u[top - 4 : top - 1, left : left + 3] = 180
    mask = breast_mask(u)
    assert not mask[: top - 1].any()
    iou = (mask & inside).sum() / (mask | inside).sum()
    assert iou > 0.99


def test_breast_mask_empty_image():
    assert not breast_mask(np.zeros((20, 20), np.uint8)).any()


# ----------------------------------------------------------------------------------------------------
# laterality
def test_laterality_flip_and_inverse():
    w = 50
    mask = np.zeros((40, w), bool)
    mask[10:20, 30:45] = True  # pixels x = 30..44 -> box x1=30, x2=45
    assert chest_wall_side(mask) == "right"
    flipped = flip_image(mask)
    ys, xs = np.nonzero(flipped)
    assert flip_boxes_xyxy([[30, 10, 45, 20]], w).tolist() == [[xs.min(), 10, xs.max() + 1, 20]]
    assert flip_boxes_xywh([[30, 10, 15, 10]], w).tolist() == [[xs.min(), 10, 15, 10]]
    box = np.array([[5.5, 1, 12.25, 3]])
    np.testing.assert_allclose(unflip_boxes_xyxy(flip_boxes_xyxy(box, w), w, True), box)
    np.testing.assert_allclose(unflip_boxes_xywh(flip_boxes_xywh(box, w), w, True), box)
    np.testing.assert_allclose(unflip_boxes_xyxy(box, w, False), box)
    np.testing.assert_array_equal(unflip_mask(flipped, True), mask)
    assert unflip_points([[49, 3]], w, True).tolist() == [[0, 3]]
    # a tie (as many breast pixels in each half; the middle column of an odd width counts for
    # neither) keeps the chest wall on the left: no flip
    tie = np.zeros((4, 5), bool)
    tie[:, [0, 2, 4]] = True
    assert chest_wall_side(tie) == "left"
    tie[0, 2] = False
    tie[0, 4] = False
    assert chest_wall_side(tie) == "left"
    tie[1, 0] = False
    assert chest_wall_side(tie) == "left"
    tie[2, 0] = False
    assert chest_wall_side(tie) == "right"


def test_preprocess_normalize_laterality():
    img, inside = breast_image()
    right = img[:, ::-1].copy()  # chest wall on the right
    p = preprocess(right, normalize_laterality=True, window=(127.5, 255))
    assert p.record["flipped"] is True
    assert chest_wall_side(p.breast_mask) == "left"
    np.testing.assert_array_equal(
        unflip_mask(p.image, True), preprocess(right, window=(127.5, 255)).image
    )
    q = preprocess(img, normalize_laterality=True, window=(127.5, 255))
    assert q.record["flipped"] is False


def test_preprocess_array_identity_window_and_record():
    img, inside = breast_image()
    p = preprocess(img, window=(127.5, 255))  # c - w/2 = 0 -> 0, c + w/2 = 255 -> 255: identity
    assert isinstance(p, Preprocessed)
    np.testing.assert_array_equal(p.image[p.breast_mask], img[p.breast_mask])
    json.dumps(p.record)
    for key in ("source", "window", "artifact_columns", "warnings", "meta", "flipped"):
        assert key in p.record
    for key in ("pixel_spacing", "laterality", "view", "photometric", "presentation_intent"):
        assert key in p.record["meta"]
    with pytest.raises(InputError):
        preprocess(np.zeros((10, 10)))


# ----------------------------------------------------------------------------------------------------
# synthetic DICOM mammograms with exact truth
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from datasets.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "art", n=3, seed=11, height=512, width=416, artifact=True, progress=False)
    generate(root / "clean", n=2, seed=12, height=512, width=416, artifact=False, progress=False)
    generate(
        root / "nowin",
        n=2,
        seed=13,
        height=512,
        width=416,
        artifact=True,
        window_mode="single",
        progress=False,
    )
    # A mammogram for presentation must carry a window, so the generator always writes one; files
    # without one exist all the same (and digitised films have none): take it out here.
    for path in sorted((root / "nowin" / "images").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
                        "VOILUTFunction"):
            delattr(ds, keyword)
        ds.save_as(path)
    return root


def _images(folder):
    man = json.loads((folder / "manifest.json").read_text())
    return [(im, folder / im["file_name"]) for im in man["images"]]


def _truth(folder, stem):
    return cv2.imread(str(folder / "breast_masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE) > 0


@pytest.mark.parametrize("kind", ["art", "clean", "nowin"])
def test_synthetic_breast_mask_text_and_artifacts(synthetic, kind):
    folder = synthetic / kind
    for im, path in _images(folder):
        p = preprocess(path)
        assert (p.record["window"]["source"] == "fallback") == (kind == "nowin")
        truth = _truth(folder, im["stem"])
        iou = (truth & p.breast_mask).sum() / (truth | p.breast_mask).sum()
        assert iou >= 0.98, (im["stem"], iou)
        for box in im["text_boxes"]:  # burned-in text removed
            x, y, bw, bh = box["bbox"]
            assert not p.image[y : y + bh, x : x + bw].any(), (im["stem"], box["text"])
        # expected: the manifest's columns that cross the breast with enough dots to be seen
        expected = []
        for c in im["artifact_columns"]:
            detail = im["artifact_detail"]
            rows = np.array(detail["rows_bright"] + detail["rows_dark"], dtype=int)
            if truth[rows, c].sum() >= 15:
                expected.append(c)
        assert set(p.record["artifact_columns"]) <= set(im["artifact_columns"]), im["stem"]
        assert p.record["artifact_columns"] == expected, im["stem"]
        if kind == "clean":
            assert p.record["artifact_columns"] == []
            raw = preprocess(path, remove_artifacts=False)
            np.testing.assert_array_equal(raw.image, p.image)
        elif expected:
            raw = preprocess(path, remove_artifacts=False)
            changed = np.nonzero(raw.image != p.image)[1]
            assert set(changed.tolist()) <= set(expected)  # no pixel off the column changes


def test_synthetic_monochrome1_equals_monochrome2(tmp_path):
    from datasets.synthetic import generate

    kw = dict(
        n=1, seed=21, height=512, width=416, views=("CC",), window_mode="single", progress=False
    )
    generate(tmp_path / "m1", photometric="MONOCHROME1", **kw)
    generate(tmp_path / "m2", photometric="MONOCHROME2", **kw)
    (_, p1), (_, p2) = _images(tmp_path / "m1")[0], _images(tmp_path / "m2")[0]
    a, b = preprocess(p1), preprocess(p2)
    assert a.record["meta"]["photometric"] == "MONOCHROME1"
    diff = np.abs(a.image.astype(int) - b.image.astype(int))
    # windows are stored rounded to 0.01 in each file: at most one grey level apart
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert (a.breast_mask != b.breast_mask).mean() < 0.001


# ----------------------------------------------------------------------------------------------------
# command line
def test_cli_outputs_and_exit_codes(synthetic, tmp_path, capsys):
    good = [path for _, path in _images(synthetic / "clean")][:2]
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\x00" * 10)
    out = tmp_path / "out"
    assert main([*map(str, good), "--out", str(out), "--quiet"]) == 0
    for path in good:
        stem = path.stem
        img = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / f"{stem}_breast.png"), cv2.IMREAD_UNCHANGED)
        rec = json.loads((out / f"{stem}.json").read_text())
        assert img.dtype == np.uint8 and img.shape == mask.shape
        assert set(np.unique(mask)) <= {0, 255}
        assert rec["window"]["source"] in ("file", "fallback")
        assert "artifact_columns" in rec and "warnings" in rec and "meta" in rec
        np.testing.assert_array_equal(img, preprocess(path).image)
    capsys.readouterr()
    out2 = tmp_path / "out2"
    missing = tmp_path / "missing.dcm"
    code = main([str(bad), str(good[0]), str(missing), "--out", str(out2), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert (out2 / f"{good[0].stem}.png").exists()  # good files are still processed
    assert str(bad) in err and str(missing) in err and "2 file(s) failed" in err
    assert not list(out2.glob("broken*")) and not list(out2.glob(".*tmp"))


def test_cli_as_module(synthetic, tmp_path):
    _, path = _images(synthetic / "clean")[0]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.preprocess",
            str(path),
            str(tmp_path / "nope.dcm"),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    assert (tmp_path / "o" / f"{path.stem}.json").exists()
    assert "nope.dcm: file not found" in res.stderr
