"""MIAS and BCDR converters on fixtures written in each published format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from canonical_testing import by_stem
from PIL import Image

from common.canonical import load_canonical_dicts
from common.errors import InputError
from common.io import read_json, read_png
from datasets import bcdr, mias
from datasets.canonical import circle_to_mask, polygon_to_mask


def _assert_patient_disjoint(out):
    split = read_json(out / "split.json")
    sets = [set(split["patients"][s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    return split


# ----------------------------------------------------------------------------------------------- MIAS

MIAS_INFO = "\n".join(
    [
        "REFNUM BG CLASS SEVERITY X Y RADIUS ",  # the header, trailing spaces as published
        "mdb001 G CIRC B 535 425 197",
        "mdb002 G CIRC B 522 280 69",
        "mdb002 G CALC M 100 900 20",  # second finding on the same image
        "mdb003 D NORM ",
        "mdb004 F ARCH M 300 300 50",
        "mdb005 G CALC B",  # no coordinates
        "mdb006 F SPIC M 10 10 30",
        "mdb007 X",
        "mdb008 F NORM",  # image file missing
    ]
)


def mias_image(number: int = 1) -> np.ndarray:
    """A 1024 x 1024 8-bit mini-MIAS stand-in: a bright rectangular "breast", varying per image."""
    img = np.zeros((1024, 1024), np.uint8)
    img[100:900, 50:700] = 120
    img[400:420, 300:320] = 120 + number  # makes every file different
    return img


def build_mias_root(root, info: str = MIAS_INFO, numbers=range(1, 8)):
    """An all-mias download at ``root``: Info.txt and mdbNNN.pgm for ``numbers`` (mdb008 missing)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Info.txt").write_text(info)
    for n in numbers:
        Image.fromarray(mias_image(n)).save(root / f"mdb{n:03d}.pgm")
    return root


@pytest.fixture(scope="module")
def mias_root(tmp_path_factory):
    return build_mias_root(tmp_path_factory.mktemp("all-mias"))


def test_mias_boxes_masks_and_problems(mias_root, tmp_path):
    out = tmp_path / "out"
    summary = mias.convert(mias_root, out, seed=0, verbose=False)
    masses, calcs = read_json(out / "masses.json"), read_json(out / "calcifications.json")
    images, anns = by_stem(masses)
    assert sorted(images) == [
        "mias_mdb001",
        "mias_mdb002",
        "mias_mdb003",
        "mias_mdb004",
        "mias_mdb006",
    ]
    assert summary["images"] == 5 and summary["mass_annotations"] == 3
    # bottom-left origin: row = 1023 - Y
    (a1,) = anns["mias_mdb001"]
    assert a1["bbox"] == [535 - 197, 1023 - 425 - 197, 394, 394]
    assert a1["pathology"] == "BENIGN" and a1["shape"] == "circumscribed"
    (a2,) = anns["mias_mdb002"]
    assert a2["bbox"] == [522 - 69, 1023 - 280 - 69, 138, 138]
    (a6,) = anns["mias_mdb006"]  # circle crosses the bottom-left corner: clipped
    assert a6["bbox"] == [0.0, 1013 - 30, 40.0, 41.0] and a6["pathology"] == "MALIGNANT"
    assert anns["mias_mdb003"] == [] and anns["mias_mdb004"] == []  # ARCH is not a mass

    im1 = images["mias_mdb001"]
    assert (im1["height"], im1["width"], im1["view"]) == (1024, 1024, "MLO")
    assert im1["pixel_spacing"] == [0.2, 0.2] and im1["density"] is None and im1["tissue"] == "G"
    assert im1["laterality"] == "R" and images["mias_mdb002"]["laterality"] == "L"
    assert im1["patient_id"] == images["mias_mdb002"]["patient_id"] == "mias_001"
    assert images["mias_mdb006"]["patient_id"] == "mias_003"
    assert images["mias_mdb002"]["pathology"] == "MALIGNANT"
    # the loaders read PNG, not PGM: the converter writes the pixels, unchanged, as 8-bit PNG
    assert im1["file_name"] == "images/mias_mdb001.png"
    assert im1["source_file"] == str((mias_root / "mdb001.pgm").resolve())
    png = read_png(out / im1["file_name"])
    assert png.dtype == np.uint8 and np.array_equal(png, mias_image(1))
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"mias_{s}.png" for s in ("mdb001", "mdb002", "mdb003", "mdb004", "mdb006")
    ]

    cimages, canns = by_stem(calcs)
    assert cimages["mias_mdb001"]["mask_file"] is None
    assert cimages["mias_mdb002"]["mask_file"] == "calc_masks/mias_mdb002.png"
    mask = read_png(out / "calc_masks/mias_mdb002.png") > 0
    assert np.array_equal(mask, circle_to_mask((100, 1023 - 900), 20, (1024, 1024)))
    (c,) = canns["mias_mdb002"]
    assert c["calc_type"] == "large" and c["bbox"] == [80.0, 103.0, 41.0, 41.0]
    assert mask[c["point"][1], c["point"][0]]

    report = read_json(out / "conversion_report.json")
    errors = [p for p in report["problems"] if p["level"] == "error"]
    msgs = " | ".join(f"{p['row']}:{p['message']}" for p in errors)
    assert "7:mdb005: CALC finding without coordinates" in msgs
    assert "9:mdb007" in msgs and "mdb008.pgm not found" in msgs
    assert all(p["file"].endswith("Info.txt") for p in errors)
    assert any(p["level"] == "note" and "distortion" in p["message"] for p in report["problems"])
    _assert_patient_disjoint(out)


def test_mias_split_stable_and_cli(mias_root, tmp_path, capsys):
    assert mias.main(["--root", str(mias_root), "--out", str(tmp_path / "a"), "--seed", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 5
    mias.convert(mias_root, tmp_path / "b", seed=4, verbose=False)
    a, b = read_json(tmp_path / "a/split.json"), read_json(tmp_path / "b/split.json")
    assert a["patients"] == b["patients"]
    assert a["images"]["images/mias_mdb001.png"]["sha256"]
    assert mias.main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2


# ----------------------------------------------------------------------------------------------- BCDR

BCDR_HEADER = (
    "patient_id,study_id,series,lesion_id,segmentation_id,image_view,image_filename,lw_x_points,"
    "lw_y_points,mammography_type,mammography_nodule,mammography_calcification,"
    "mammography_microcalcification,mammography_axillary_adenopathy,"
    "mammography_architectural_distortion,mammography_stroma_distortion,age,density,classification"
)


def _bcdr_row(pid, lesion, view, name, xs, ys, nodule=0, calc=0, micro=0, stroma=0, density=" 3"):
    return (
        f"{pid}, 1, 1, {lesion}, {lesion}, {view}, {name}, {xs}, {ys}, 1, {nodule}, {calc}, {micro},"
        f" 0, 0, {stroma}, 56,{density}, Malign"
    )


@pytest.fixture
def bcdr_root(tmp_path):
    return build_bcdr_root(tmp_path)


def build_bcdr_root(tmp_path, pixels=None, extra_rows=()):
    """A BCDR-D01 download under ``tmp_path/bcdr``; returns (root, {key: image_filename}).

    ``pixels(rows, cols)`` gives each TIFF's uint16 pixels (default: constant 100); ``extra_rows`` are
    appended to the outline CSV.
    """
    root = tmp_path / "bcdr"
    sub = root / "BCDR-D01_dataset"
    names = {
        "p1cc": "patient_1/study_1/img_1_1_1_RCC.tif",
        "p1lcc": "patient_1/study_1/img_1_1_2_LCC.tif",
        "p2": "patient_2/study_2/img_2_2_1_RMLO.tif",
        "p3": "patient_3/study_3/img_3_3_1_LMLO.tif",
        "p4": "patient_4/study_4/img_4_4_1_RMLO.tif",
    }
    for name in names.values():
        (sub / name).parent.mkdir(parents=True, exist_ok=True)
        image = np.full((48, 64), 100, np.uint16) if pixels is None else pixels(48, 64)
        tifffile.imwrite(sub / name, image)
    rows = [
        BCDR_HEADER,
        _bcdr_row(1, 1, 1, names["p1cc"], " 10 20 20 10", " 5 5 15 15", nodule=1),
        _bcdr_row(1, 2, 1, names["p1cc"], " 30 34 34 30", " 20 20 24 24", calc=1),
        _bcdr_row(1, 3, 2, names["p1lcc"], " 40 44", " 30 30", micro=1, density=" NaN"),
        _bcdr_row(4, 4, 3, names["p4"], " 1 2 3", " 1 2", nodule=1),  # image left out
        _bcdr_row(2, 5, 3, "patient_2/study_2/missing.tif", " 1 2 3", " 1 2 3", nodule=1),
        _bcdr_row(3, 6, 4, names["p3"], " 5 9 9", " 5 5 9", stroma=1),
        _bcdr_row(2, 7, 3, names["p2"], " 50 70 70 50", " 40 40 60 60", nodule=1),
        *extra_rows,
    ]
    (sub / "bcdr_d01_outlines.csv").write_text("\n".join(rows) + "\n")
    return root, names


def test_bcdr_outlines_to_boxes_and_masks(bcdr_root, tmp_path):
    root, names = bcdr_root
    out = tmp_path / "out"
    summary = bcdr.convert(root, out, seed=0, verbose=False)
    masses, calcs = read_json(out / "masses.json"), read_json(out / "calcifications.json")
    images, anns = by_stem(masses)
    stems = {
        "p1cc": "bcdr_d01_img_1_1_1_RCC",
        "p1lcc": "bcdr_d01_img_1_1_2_LCC",
        "p2": "bcdr_d01_img_2_2_1_RMLO",
        "p3": "bcdr_d01_img_3_3_1_LMLO",
    }
    assert sorted(images) == sorted(stems.values()) and summary["images"] == 4
    cc = images[stems["p1cc"]]
    assert (cc["laterality"], cc["view"], cc["height"], cc["width"]) == ("R", "CC", 48, 64)
    assert cc["density"] == 3 and cc["pathology"] == "MALIGNANT" and cc["patient_id"] == "bcdr_1"
    assert images[stems["p1lcc"]]["density"] is None
    assert (images[stems["p3"]]["laterality"], images[stems["p3"]]["view"]) == ("L", "MLO")
    (m1,) = anns[stems["p1cc"]]
    assert m1["bbox"] == [10.0, 5.0, 10.0, 10.0] and m1["area"] == 100.0
    assert m1["segmentation"] == [[10.0, 5.0, 20.0, 5.0, 20.0, 15.0, 10.0, 15.0]]
    (m2,) = anns[stems["p2"]]  # outline runs past the 64x48 image: box clipped
    assert m2["bbox"] == [50.0, 40.0, 14.0, 8.0]
    assert anns[stems["p3"]] == [] and anns[stems["p1lcc"]] == []

    cimages, canns = by_stem(calcs)
    mask = read_png(out / cimages[stems["p1cc"]]["mask_file"]) > 0
    expected = polygon_to_mask([(30, 20), (34, 20), (34, 24), (30, 24)], (48, 64))
    assert np.array_equal(mask, expected) and expected.sum() == 25
    (c,) = canns[stems["p1cc"]]
    assert c["bbox"] == [30.0, 20.0, 5.0, 5.0] and c["area"] == 25 and c["calc_type"] == "dot"
    (c2,) = canns[stems["p1lcc"]]  # two-point outline -> small raw mark
    assert c2["calc_type"] == "dot" and c2["bbox"][1] == 28.0
    assert cimages[stems["p2"]]["mask_file"] is None

    report = read_json(out / "conversion_report.json")
    errs = {p["row"]: p for p in report["problems"] if p["level"] == "error"}
    assert "3 x coordinates but 2 y" in errs[5]["message"]
    assert "img_4_4_1_RMLO.tif left out" in errs[5]["message"]
    assert "missing.tif not found" in errs[6]["message"]
    assert errs[5]["file"].endswith("bcdr_d01_outlines.csv")
    assert any(p["level"] == "warning" and p["row"] == 8 for p in report["problems"])
    assert any(p["level"] == "note" and p["row"] == 7 for p in report["problems"])
    _assert_patient_disjoint(out)


def test_bcdr_missing_columns(tmp_path):
    (tmp_path / "bcdr_x_outlines.csv").write_text("patient_id,image_view\n1,1\n")
    with pytest.raises(InputError, match="lw_x_points"):
        bcdr.convert(tmp_path, tmp_path / "out", verbose=False)


def test_rerun_prunes_stale_masks_and_registers(mias_root, tmp_path):
    out = tmp_path / "out"
    mias.convert(mias_root, out, verbose=False)
    (out / "calc_masks" / "stale.png").write_bytes(b"")
    with pytest.raises(InputError, match="not empty.*--overwrite"):
        mias.convert(mias_root, out, verbose=False)
    assert (out / "calc_masks" / "stale.png").exists()  # a refused run touches nothing
    mias.convert(mias_root, out, verbose=False, overwrite=True)
    assert sorted(p.name for p in (out / "calc_masks").iterdir()) == ["mias_mdb002.png"]

    dicts = load_canonical_dicts(out, "calc")
    (with_mask,) = [d for d in dicts if d["mask_file"]]
    assert with_mask["annotations"][0]["calc_type"] == "large"
    assert with_mask["file_name"] == str((out / "images/mias_mdb002.png").resolve())
    pytest.importorskip("detectron2")  # optional: registration is checked only where it is installed
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from mass_det.data.register import register_canonical

    names = register_canonical(out, "mias")
    try:
        assert "mias_mass_train" in names and "mias_calc_test" in names
        total = sum(len(DatasetCatalog.get(f"mias_mass_{s}")) for s in ("train", "val", "test"))
        assert total == 5
        assert MetadataCatalog.get("mias_mass_val").thing_classes == ["mass"]
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_cli_module_entry_point(mias_root, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "datasets.mias",
            "--root",
            str(mias_root),
            "--out",
            str(out),
            "--seed",
            "2",
            "--no-hash",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 5
    assert "mias: 3 errors" in proc.stderr  # the problem summary is printed
    assert read_json(out / "split.json")["seed"] == 2
