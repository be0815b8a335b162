"""Every converter's output loads end to end, and hostile downloads / output folders are handled.

Each converter converts a tiny fixture in its published format (the builders of
``test_convert_dicom_sets`` / ``test_convert_mias_bcdr``, with loadable pixels) and the result goes
through what training and prediction do with it: ``common.preprocess.preprocess`` on every image, one
training batch of the mass detector (``MassDatasetMapper(cfg, is_train=True)`` on
``load_canonical_dicts``) and one of the calcification segmenter (``load_split`` -> patch index ->
``CalcPatchDataset``).
"""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from canonical_testing import breast_phantom
from PIL import Image
from test_convert_dicom_sets import (
    H,
    W,
    _vindr_row,
    build_cbis_root,
    build_inbreast_root,
    build_vindr_root,
    write_dicom,
)
from test_convert_mias_bcdr import MIAS_INFO, _bcdr_row, build_bcdr_root, build_mias_root

from common.canonical import load_canonical_dicts
from common.dicom import load_image
from common.errors import InputError
from common.io import read_json
from common.preprocess import preprocess
from datasets import bcdr, cbis_ddsm, inbreast, mias, vindr
from datasets.canonical import SPLITS, coordinates_problem, path_inside

REPO = Path(__file__).resolve().parents[2]
MASS_CONFIG = REPO / "mass_det" / "configs" / "quick_schedules" / "mass_det_instant_test.yaml"
CALC_CONFIG = REPO / "calc_seg" / "configs" / "quick_schedules" / "unet_gn_instant_test.yaml"


def _problems(out, level="error"):
    return [p for p in read_json(out / "conversion_report.json")["problems"] if p["level"] == level]


def _stems(out):
    return sorted(im["stem"] for im in read_json(out / "masses.json")["images"])


# ------------------------------------------------------------------------------------ the loading


def load_end_to_end(out: Path, tmp_path: Path) -> dict:
    """Load a converted folder as preprocessing, the mass trainer and the calc trainer do."""
    # torch, detectron2 and the model packages are optional here: imported only where installed
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    records = load_canonical_dicts(out, "mass")
    assert records
    for rec in records:  # every image pre-processes, in its recorded size
        assert Path(rec["file_name"]).is_file()
        p = preprocess(rec["file_name"])
        assert p.image.shape == (rec["height"], rec["width"]) and p.breast_mask.any()

    # mass detector: one training batch from the canonical dicts of each split
    pytest.importorskip("detectron2")
    from mass_det.config import get_mass_det_cfg
    from mass_det.data.mapper import MassDatasetMapper

    cfg = get_mass_det_cfg(
        str(MASS_CONFIG),
        ["MODEL.DEVICE", "cpu", "INPUT.MAMMO.EXTENT_PROB", "0.0", "INPUT.MAMMO.CACHE_DIR", ""],
    )
    mapper = MassDatasetMapper(cfg, is_train=True)
    batch = []
    for split in SPLITS:
        for d in load_canonical_dicts(out, "mass", split):
            mapped = mapper(d)
            assert mapped is not None, f"{d['file_name']} was skipped as unreadable"
            c, h, w = mapped["image"].shape
            assert c == 3 and min(h, w) == min(cfg.INPUT.MIN_SIZE_TRAIN)
            assert len(mapped["instances"]) == len(d["annotations"])
            batch.append(mapped)
    n_masses = sum(len(b["instances"]) for b in batch)

    # calcification segmenter: the trainer's studies, patch index and one batch of patches
    from calc_seg.config import get_calc_seg_cfg
    from calc_seg.data.dataset import CalcPatchDataset
    from calc_seg.data.patches import build_patch_index, select_patches
    from calc_seg.engine.trainer import load_split

    ccfg = get_calc_seg_cfg(
        CALC_CONFIG, ["DATA.ROOT", str(out), "OUTPUT_DIR", str(tmp_path / "cs")]
    )
    studies = [s for split in SPLITS for s in load_split(ccfg, split)]
    assert len(studies) == len(records)
    size = ccfg.PATCH.SIZE
    entries = build_patch_index(studies, size, ccfg.PATCH.STRIDE)
    assert len(entries)
    ds = CalcPatchDataset(studies, select_patches(entries, drop_excluded=False), size)
    items = [ds[i] for i in range(min(len(ds), ccfg.SOLVER.BATCH_SIZE))]
    x = torch.stack([i[0] for i in items])
    assert x.shape == (len(items), 1, size, size) and x.dtype == torch.float32
    with_gt = [s for s in studies if s.record.get("mask_file")]
    for s in with_gt:
        assert s.array("gt").any() and s.array("gt").shape == (s.height, s.width)
    return {"images": len(records), "masses": n_masses, "calc_images": len(with_gt)}


def test_mias_loads_end_to_end(tmp_path):
    root = build_mias_root(tmp_path / "all-mias")
    out = tmp_path / "out"
    mias.convert(root, out, verbose=False)
    # problem 8: the images are PNG in the canonical folder, pixel for pixel the PGM
    for im in read_json(out / "masses.json")["images"]:
        assert im["file_name"].startswith("images/") and im["file_name"].endswith(".png")
        loaded = load_image(out / im["file_name"]).pixels
        assert np.array_equal(loaded, np.asarray(Image.open(im["source_file"])).astype(np.float32))
    got = load_end_to_end(out, tmp_path)
    assert got == {"images": 5, "masses": 3, "calc_images": 1}


@pytest.mark.parametrize("converter, build, expected", [
    (bcdr, lambda tmp: build_bcdr_root(tmp, pixels=breast_phantom)[0],
     {"images": 4, "masses": 2, "calc_images": 2}),
    (inbreast, lambda tmp: build_inbreast_root(tmp, pixels=breast_phantom),
     {"images": 3, "masses": 1, "calc_images": 1}),
    (cbis_ddsm, lambda tmp: build_cbis_root(tmp, pixels=breast_phantom),
     {"images": 2, "masses": 2, "calc_images": 1}),
    (vindr, lambda tmp: build_vindr_root(tmp, pixels=breast_phantom),
     {"images": 3, "masses": 3, "calc_images": 1}),
], ids=["bcdr", "inbreast", "cbis_ddsm", "vindr"])
def test_converter_output_loads_end_to_end(tmp_path, converter, build, expected):
    out = tmp_path / "out"
    converter.convert(build(tmp_path), out, verbose=False)
    assert load_end_to_end(out, tmp_path) == expected


# ------------------------------------------------------------------- problem 9: hostile MIAS files


def test_mias_lesion_outside_image_drops_the_image(tmp_path):
    info = "\n".join(
        [
            "mdb001 G CIRC B 2000 500 30",  # centre right of the 1024 x 1024 image
            "mdb002 G CALC M 100 -5 10",  # y < 0: below the image (origin bottom-left)
            "mdb003 G CIRC B 500 500 0",  # radius 0
            "mdb004 G CIRC B 500 500 40",
            "mdb004 G SPIC M 1024 10 40",  # second finding of mdb004 outside: whole image out
            "mdb005 G CIRC B 500 500 40",
        ]
    )
    root = build_mias_root(tmp_path / "mias", info, range(1, 6))
    out = tmp_path / "out"
    mias.convert(root, out, verbose=False)
    assert _stems(out) == ["mias_mdb005"]  # never kept as lesion-free
    errors = {p["row"]: p["message"] for p in _problems(out)}
    assert (
        "mdb001: CIRC centre (2000, 500) outside the 1024x1024 image; image left out" == errors[1]
    )
    assert "mdb002: CALC centre" in errors[2] and "left out" in errors[2]
    assert "radius 0" in errors[3] and "outside" in errors[5]


def test_mias_truncated_pgm_is_reported_and_skipped(tmp_path):
    root = build_mias_root(tmp_path / "mias")
    bad = root / "mdb002.pgm"
    bad.write_bytes(b"P5\n1024 1024\n255\n" + bytes(100))
    assert bad.stat().st_size == 117
    (root / "mdb003.pgm").write_bytes(b"P5\n1024 1024\n255\n" + bytes(1024 * 1024))  # constant
    out = tmp_path / "out"
    summary = mias.convert(root, out, verbose=False)
    assert _stems(out) == ["mias_mdb001", "mias_mdb004", "mias_mdb006"]
    assert summary["images"] == 3
    by_file = {Path(p["file"]).name: p["message"] for p in _problems(out)}
    assert "bad image file" in by_file["mdb002.pgm"] and "truncated" in by_file["mdb002.pgm"]
    assert "constant image" in by_file["mdb003.pgm"]
    assert not (out / "images" / "mias_mdb002.png").exists()


def test_mias_two_files_of_one_refnum_is_an_error_naming_both(tmp_path):
    root = build_mias_root(tmp_path / "mias")
    (root / "copy").mkdir()
    (root / "copy" / "MDB001.pgm").write_bytes((root / "mdb001.pgm").read_bytes())
    out = tmp_path / "out"
    mias.convert(root, out, verbose=False)
    assert "mias_mdb001" not in _stems(out) and "mias_mdb002" in _stems(out)
    (err,) = [p for p in _problems(out) if "mdb001:" in p["message"]]
    assert str(root / "mdb001.pgm") in err["message"]
    assert str(root / "copy" / "MDB001.pgm") in err["message"]
    assert err["row"] == 2 and err["file"].endswith("Info.txt")


def test_mias_unlisted_pgm_is_noted(tmp_path):
    root = build_mias_root(tmp_path / "mias", MIAS_INFO, range(1, 10))  # mdb009 not in Info.txt
    out = tmp_path / "out"
    mias.convert(root, out, verbose=False)
    assert any("mdb009 is not listed" in p["message"] for p in _problems(out, "note"))


# ------------------------------------------------------------------- problem 10: the output folder


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_out_refuses_a_non_empty_folder_without_overwrite(tmp_path, capsys):
    bcdr_root, _ = build_bcdr_root(tmp_path)
    mias_root = build_mias_root(tmp_path / "mias")
    out = tmp_path / "dataset"
    bcdr.convert(bcdr_root, out, verbose=False)  # an existing dataset with calcification masks
    (out / "notes.txt").write_text("mine")
    assert list((out / "calc_masks").glob("*.png"))
    before = _tree(out)

    assert mias.main(["--root", str(mias_root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: output folder is not empty") and "--overwrite" in err
    assert err.count("\n") == 1  # one line
    assert _tree(out) == before  # nothing deleted, nothing overwritten
    with pytest.raises(InputError, match="not empty"):
        mias.convert(mias_root, out, verbose=False)
    assert _tree(out) == before
    # an empty folder is fine; the download folder itself (or one holding it) never is
    (tmp_path / "empty").mkdir()
    mias.convert(mias_root, tmp_path / "empty", verbose=False)
    with pytest.raises(InputError, match="holds the download"):
        mias.convert(mias_root, mias_root, verbose=False, overwrite=True)
    with pytest.raises(InputError, match="holds the download"):
        mias.convert(mias_root, tmp_path, verbose=False, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        mias.convert(mias_root, tmp_path / "file", verbose=False)


def test_overwrite_replaces_only_the_canonical_files(tmp_path, capsys):
    bcdr_root, _ = build_bcdr_root(tmp_path)
    mias_root = build_mias_root(tmp_path / "mias")
    out = tmp_path / "dataset"
    bcdr.convert(bcdr_root, out, verbose=False)
    old_masks = sorted(p.name for p in (out / "calc_masks").glob("*.png"))
    (out / "notes.txt").write_text("mine")
    (out / "calc_masks" / "README.txt").write_text("mine too")
    (out / "extra").mkdir()
    (out / "extra" / "x.png").write_bytes(b"not ours")

    argv = ["--root", str(mias_root), "--out", str(out), "--overwrite"]
    assert mias.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    # the user's files stay, the BCDR masks (canonical files) are gone, no mixed folder
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "calc_masks" / "README.txt").read_text() == "mine too"
    assert (out / "extra" / "x.png").read_bytes() == b"not ours"
    masks = sorted(p.name for p in (out / "calc_masks").glob("*.png"))
    assert masks == ["mias_mdb002.png"] and not set(old_masks) & set(masks)
    for kind in ("masses.json", "calcifications.json"):
        coco = read_json(out / kind)
        assert coco["info"]["source"] == "mini-MIAS"
        for im in coco["images"]:
            assert (out / im["file_name"]).is_file()
            if im.get("mask_file"):
                assert (out / im["mask_file"]).is_file()
    assert read_json(out / "conversion_report.json")["dataset"] == "mias"
    split = read_json(out / "split.json")
    assert all(k.startswith("images/mias_") for k in split["images"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset.")]  # no staging left

    # a rerun with --overwrite replaces its own images too (and keeps the rest)
    (mias_root / "mdb006.pgm").unlink()
    mias.convert(mias_root, out, verbose=False, overwrite=True)
    assert not (out / "images" / "mias_mdb006.png").exists()
    assert (out / "notes.txt").exists() and (out / "extra" / "x.png").exists()


def test_failed_conversion_leaves_out_untouched(tmp_path):
    bcdr_root, _ = build_bcdr_root(tmp_path)
    out = tmp_path / "dataset"
    bcdr.convert(bcdr_root, out, verbose=False)
    before = _tree(out)
    empty = tmp_path / "mias_no_images"
    empty.mkdir()
    (empty / "Info.txt").write_text("mdb001 G NORM\n")  # its image is missing: nothing converts
    with pytest.raises(InputError, match="no image could be converted"):
        mias.convert(empty, out, verbose=False, overwrite=True)
    assert _tree(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset.")]
    with pytest.raises(InputError):
        mias.convert(empty, tmp_path / "new", verbose=False)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------- problem 15: non-finite coordinates, "../" paths


def test_bcdr_non_finite_and_far_coordinates_are_reported_per_row(tmp_path):
    extra = [
        _bcdr_row(5, 8, 3, "patient_5/study_5/img_5_5_1_RMLO.tif", " 10 nan 20", " 5 5 15", 1),
        _bcdr_row(6, 9, 3, "patient_6/study_6/img_6_6_1_RMLO.tif", " 10 1e30 20", " 5 5 15", 1),
        _bcdr_row(7, 10, 3, "patient_7/study_7/img_7_7_1_RMLO.tif", " 10 inf 20", " 5 5 15", 0, 1),
    ]
    root, _ = build_bcdr_root(tmp_path, pixels=breast_phantom, extra_rows=extra)
    for n in (5, 6, 7):
        path = root / "BCDR-D01_dataset" / f"patient_{n}/study_{n}/img_{n}_{n}_1_RMLO.tif"
        path.parent.mkdir(parents=True)
        tifffile.imwrite(path, breast_phantom(48, 64))
    out = tmp_path / "out"
    summary = bcdr.convert(root, out, verbose=False)  # no traceback, the rest converted
    assert summary["images"] == 4
    errors = {p["row"]: p["message"] for p in _problems(out)}
    assert "non-finite coordinate (nan, 5)" in errors[9] and "left out" in errors[9]
    assert "far outside the 64x48 image" in errors[10]
    assert "non-finite coordinate (inf, 5)" in errors[11]
    assert not any("img_5_5" in s or "img_6_6" in s or "img_7_7" in s for s in _stems(out))


def test_inbreast_non_finite_point_is_reported_per_roi(tmp_path):
    root = build_inbreast_root(tmp_path)
    rois = [
        {"Name": "Mass", "Point_px": ["(1e999, 100)", "(20, 5)", "(20, 15)"]},
        {"Name": "Calcification", "Point_px": ["(10, 10)"]},
    ]
    plist = {"Images": [{"ROIs": rois}]}
    (root / "AllXML" / "1003.xml").write_bytes(plistlib.dumps(plist, fmt=plistlib.FMT_XML))
    (root / "AllXML" / "1002.xml").write_bytes(
        plistlib.dumps({"Images": [{"ROIs": [{"Name": "Mass", "Point_px": 7}, "junk"]}]})
    )
    out = tmp_path / "out"
    summary = inbreast.convert(root, out, verbose=False)
    assert summary["images"] == 1 and _stems(out) == ["inbreast_1001"]
    errs = {(Path(p["file"]).name, p["row"]): p["message"] for p in _problems(out)}
    assert "non-finite coordinate" in errs[("1003.xml", "ROI 0")]
    assert "image left out" in errs[("1003.xml", "ROI 0")]
    assert "Point_px is not a list" in errs[("1002.xml", "ROI 0")]
    assert "not a dictionary" in errs[("1002.xml", "ROI 1")]


def test_bcdr_paths_outside_root_are_skipped(tmp_path):
    secret = tmp_path / "secret.tif"  # outside --root (tmp_path/bcdr)
    tifffile.imwrite(secret, breast_phantom(48, 64))
    extra = [
        _bcdr_row(8, 11, 1, "../../secret.tif", " 10 20 20", " 5 5 15", nodule=1),
        _bcdr_row(8, 12, 1, "patient_1/../../../secret.tif", " 10 20 20", " 5 5 15", nodule=1),
    ]
    root, names = build_bcdr_root(tmp_path, extra_rows=extra)
    out = tmp_path / "out"
    summary = bcdr.convert(root, out, verbose=False)
    assert summary["images"] == 4
    files = [im["file_name"] for im in read_json(out / "masses.json")["images"]]
    assert all(f.startswith(str(root.resolve())) for f in files)
    errors = {p["row"]: p["message"] for p in _problems(out)}
    assert "points outside --root" in errors[9] and "row skipped" in errors[9]
    assert "points outside --root" in errors[10]


def test_vindr_paths_outside_root_are_skipped(tmp_path):
    root = build_vindr_root(tmp_path)
    write_dicom(root.parent / "secret" / "x.dicom", breast_phantom(H, W))
    table = root / "finding_annotations.csv"
    rows = [
        _vindr_row("../../secret", "x", "L", "CC", "['Mass']", (1, 1, 5, 5)),
        _vindr_row("s1", "../../../secret/x", "L", "CC", "['Mass']", (1, 1, 5, 5)),
    ]
    table.write_text(table.read_text() + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = vindr.convert(root, out, verbose=False)
    assert summary["images"] == 3
    files = [im["file_name"] for im in read_json(out / "masses.json")["images"]]
    assert all(f.startswith(str(root.resolve())) for f in files)
    errors = {p["row"]: p["message"] for p in _problems(out)}
    assert "outside --root" in errors[13] and "image skipped" in errors[13]
    assert "outside --root" in errors[14]


# ------------------------------------------------------------------------------- the helpers


def test_coordinates_problem_and_path_inside(tmp_path):
    assert coordinates_problem([(1, 2), (3, 4)], (10, 10)) is None
    assert coordinates_problem([(-5, 2), (15, 4)], (10, 10)) is None  # a little outside: clipped
    assert "non-finite" in coordinates_problem([(1, 2), (float("nan"), 4)], (10, 10))
    assert "far outside" in coordinates_problem([(1, 2), (31, 4)], (10, 10))
    assert coordinates_problem([], (10, 10)) == "no coordinates"
    root = tmp_path / "root"
    assert path_inside(root, root / "a", "b/../c.tif") == Path(os.path.abspath(root / "a/c.tif"))
    for cell in ("../x", "a/../../x", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            path_inside(root, root, cell)


def test_truncated_tiff_is_reported(tmp_path):
    root, names = build_bcdr_root(tmp_path, pixels=breast_phantom)
    path = root / "BCDR-D01_dataset" / names["p2"]
    path.write_bytes(path.read_bytes()[:-1000])
    out = tmp_path / "out"
    bcdr.convert(root, out, verbose=False)
    assert "bcdr_d01_img_2_2_1_RMLO" not in _stems(out)
    (err,) = [p for p in _problems(out) if p["file"].endswith("img_2_2_1_RMLO.tif")]
    assert "truncated TIFF" in err["message"]
