"""Shape rasterisation, component splitting and bookkeeping helpers of datasets.canonical, and the
converter base (:mod:`datasets.converter`) on a toy source."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datasets.canonical
from common.calcifications import classify_component
from common.errors import InputError
from common.io import read_json, read_png
from datasets.canonical import (
    CalcMask,
    ConversionReport,
    assign_splits,
    box_to_mask,
    calc_components,
    circle_to_mask,
    clip_bbox,
    leaves_image,
    mask_bbox,
    outline_mass,
    patient_split,
    points_bbox,
    points_to_mask,
    polygon_to_mask,
    read_table,
    unique_stem,
)
from datasets.converter import ConvertedImage, Converter


def test_polygon_mask_fills_inside_and_outline():
    m = polygon_to_mask([(2, 3), (9, 3), (9, 7), (2, 7)], (12, 16))
    assert m.dtype == bool and m.shape == (12, 16)
    assert m[3:8, 2:10].all() and m.sum() == 8 * 5
    thin = polygon_to_mask([(1, 1), (10, 1), (5, 1)], (4, 12))  # degenerate: a line
    assert thin[1, 1:11].all() and thin.sum() == 10


def test_circle_points_box_masks():
    c = circle_to_mask((5, 4), 2, (10, 10))
    assert c[4, 5] and c[4, 7] and c[2, 5] and not c[4, 8] and not c[2, 7]
    assert c.sum() == 13
    p = points_to_mask([(3, 3)], (8, 8), radius=1)
    assert p.sum() == 5 and p[3, 3]
    two = points_to_mask([(1, 1), (6, 1)], (4, 8), radius=0)
    assert two[1, 1:7].all()
    b = box_to_mask([1.5, 2, 3, 2], (6, 8))
    assert b.sum() == 4 * 2 and b[2, 1] and b[3, 4] and not b[2, 5]


def test_boxes():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    assert mask_bbox(m) == [3.0, 2.0, 5.0, 3.0]
    assert mask_bbox(np.zeros((3, 3), bool)) is None
    assert points_bbox([(1, 2), (4, 8), (3, 3)]) == [1.0, 2.0, 3.0, 6.0]
    assert clip_bbox([-2, -1, 5, 4], (10, 10)) == [0.0, 0.0, 3.0, 3.0]
    assert clip_bbox([12, 1, 5, 4], (10, 10)) is None


def test_outline_mass_and_leaves_image():
    square = [(2, 1), (6, 1), (6, 4), (2, 4)]
    assert outline_mass(square, (10, 10)) == {
        "bbox": [2.0, 1.0, 4.0, 3.0],
        "area": 12.0,
        "segmentation": [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]],
    }
    past = outline_mass([(5, 5), (14, 5), (14, 8)], (10, 10))  # box clipped, outline kept
    assert past["bbox"] == [5.0, 5.0, 5.0, 3.0] and past["segmentation"][0][2] == 14.0
    assert outline_mass([(1, 1), (3, 3)], (10, 10)) is None  # two points: no outline
    assert outline_mass([(20, 20), (30, 20), (30, 30)], (10, 10)) is None  # outside
    assert not leaves_image(square, (10, 10)) and not leaves_image([(-0.5, 9.5)], (10, 10))
    assert leaves_image([(-0.6, 1)], (10, 10)) and leaves_image([(1, 9.6)], (10, 10))


def test_classify_component_rule():
    dot = np.zeros((40, 40), bool)
    dot[10:14, 10:14] = True
    assert classify_component(dot) == "dot"
    line = np.zeros((40, 80), bool)
    line[20, 5:60] = True
    line[21, 5:60] = True
    assert classify_component(line) == "vessel"
    short = np.zeros((10, 10), bool)
    short[5, 2:6] = True  # elongated but only 4 px long
    assert classify_component(short) == "dot"
    arc = np.zeros((80, 80), bool)
    yy, xx = np.ogrid[:80, :80]
    arc[(np.hypot(yy - 40, xx - 40).round() == 30) & (xx < 40)] = True  # a curved vessel
    assert classify_component(arc) == "vessel"
    blob = np.zeros((60, 60), bool)
    blob[5:50, 5:50] = True  # 2025 px, square
    assert classify_component(blob) == "large"
    assert classify_component(blob, large_min_area=5000) == "dot"


def test_calc_components_8_connectivity_and_types():
    m = np.zeros((20, 30), bool)
    m[2, 2] = m[3, 3] = True  # diagonal neighbours: one component
    m[10:13, 10:13] = True
    m[15, 20:29] = True
    types = np.zeros(m.shape, np.uint8)
    types[10:13, 10:13] = 3  # stated "large" by the source
    comps = calc_components(m, types)
    assert len(comps) == 3
    by_box = {tuple(c["bbox"]): c for c in comps}
    first = by_box[(2.0, 2.0, 2.0, 2.0)]
    assert first["area"] == 2 and first["calc_type"] == "dot" and first["point"] in ([2, 2], [3, 3])
    assert by_box[(10.0, 10.0, 3.0, 3.0)]["calc_type"] == "large"
    assert by_box[(10.0, 10.0, 3.0, 3.0)]["point"] == [11, 11]
    for c in comps:
        x, y = c["point"]
        assert m[y, x]


def test_calc_mask_builder(tmp_path):
    cm = CalcMask((20, 20))
    assert cm.empty
    assert cm.add_points([(5, 5)], radius=1) == 5
    assert cm.add_circle((15, 15), 2, calc_type="large") == 13
    assert cm.add_box([30, 30, 2, 2]) == 0  # outside
    with pytest.raises(ValueError):
        cm.add_box([0, 0, 1, 1], calc_type="cluster")
    image = {"id": 7, "stem": "s1"}
    anns = cm.finish(tmp_path, image)
    assert image["mask_file"] == "calc_masks/s1.png"
    saved = read_png(tmp_path / "calc_masks/s1.png")
    assert saved.dtype == np.uint8 and set(np.unique(saved)) == {0, 255}
    assert (saved > 0).sum() == 18
    assert sorted(a["calc_type"] for a in anns) == ["dot", "large"]
    assert all(a["image_id"] == 7 for a in anns)
    empty = {"id": 8, "stem": "s2"}
    assert CalcMask((4, 4)).finish(tmp_path, empty) == [] and empty["mask_file"] is None


def test_report_and_stems(tmp_path):
    r = ConversionReport("x")
    r.error("a.csv", "bad cell", row=3)
    r.note("b.xml", "skipped")
    assert r.counts() == {"error": 1, "warning": 0, "note": 1}
    assert r.lines()[0] == "ERROR a.csv, row 3: bad cell"
    r.save(tmp_path)
    assert (tmp_path / "conversion_report.json").is_file()
    used: set[str] = set()
    assert unique_stem("P 1/a", used) == "P_1_a"
    assert unique_stem("P 1/a", used) == "P_1_a_2"


def test_read_table_multiline_cells_and_bom(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes('\ufeffa, b\n1," x\ny "\n\n 2 ,z\n'.encode())
    rows = read_table(p)
    assert rows == [(2, {"a": "1", "b": "x\ny"}), (4, {"a": "2", "b": "z"})]  # blank line = row 3
    s = tmp_path / "s.csv"
    s.write_text("A;B\n1;2\n;;\n")
    assert read_table(s, delimiter=";") == [(2, {"A": "1", "B": "2"})]


def test_assign_splits_patient_disjoint_and_stable():
    images = [{"patient_id": f"p{i // 2}"} for i in range(40)]
    assign_splits(images, seed=3)
    first = [im["split"] for im in images]
    by_patient: dict[str, set] = {}
    for im in images:
        by_patient.setdefault(im["patient_id"], set()).add(im["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert sorted(patient_split([f"p{i}" for i in range(20)], 3).values()).count("train") == 12
    assign_splits(images, seed=3)
    assert [im["split"] for im in images] == first


def test_patient_split_is_shuffled_by_the_seed():
    ids = [f"p{i:02d}" for i in range(30)]
    splits = {seed: patient_split(ids, seed) for seed in range(4)}
    # each seed gives its own assignment, and none is the sorted order cut in three
    assert len({tuple(sorted(s.items())) for s in splits.values()}) == 4
    in_order = {p: "train" if i < 18 else "val" if i < 24 else "test" for i, p in enumerate(ids)}
    assert all(s != in_order for s in splits.values())
    # the input order does not matter, only the set of ids and the seed
    assert patient_split(ids[::-1] + ids[:5], 2) == splits[2]


def test_split_ratios_count_patients_not_images():
    # one patient with 31 images, 19 with one each: 20 patients -> 12 / 4 / 4 patients whatever
    # the image counts (over the 50 images it would be 30 / 10 / 10)
    images = [{"patient_id": "big"} for _ in range(31)]
    images += [{"patient_id": f"p{i}"} for i in range(19)]
    for seed in range(3):
        assign_splits(images, seed=seed)
        by_patient = {im["patient_id"]: im["split"] for im in images}
        assert len(by_patient) == 20
        counts = {s: list(by_patient.values()).count(s) for s in ("train", "val", "test")}
        assert counts == {"train": 12, "val": 4, "test": 4}, seed
        assert {im["split"] for im in images if im["patient_id"] == "big"} == {by_patient["big"]}
    assert sorted(patient_split(range(10), 0, (0.5, 0.3, 0.2)).values()) == (
        ["test"] * 2 + ["train"] * 5 + ["val"] * 3
    )
    # counts are rounded, the remainder goes to test: 11 patients -> 6.6 / 2.2 -> 7 / 2 / 2
    counts = sorted(patient_split(range(11), 0).values())
    assert counts == ["test"] * 2 + ["train"] * 7 + ["val"] * 2


def test_canonical_keeps_every_name_it_exports():
    for name in datasets.canonical.__all__:
        assert getattr(datasets.canonical, name) is not None
    # what the synthetic generator imports from it
    for name in ("DEFAULT_RATIOS", "calc_components", "mask_bbox", "mask_polygons"):
        assert name in datasets.canonical.__all__
    assert {"patient_split", "write_canonical"} <= set(datasets.canonical.__all__)


# ------------------------------------------------------------------------- the converter base


class ToyConverter(Converter):
    """A toy source: ``toy.txt`` lines ``stem patient [x y]`` (a calcification point) on 8 x 8
    images; a line ``bad`` is reported and skipped."""

    name, title = "toy", "Toy"

    def images(self):
        table = self.root / "toy.txt"
        if not table.is_file():
            raise InputError(self.root, "no toy.txt found")
        for row, line in enumerate(self.progress(table.read_text().splitlines()), start=1):
            cells = line.split()
            if cells == ["bad"]:
                self.report.error(table, "bad line", row)
                continue
            calc = CalcMask((8, 8))
            if len(cells) == 4:
                calc.add_points([(float(cells[2]), float(cells[3]))], radius=0)
            record = {"file_name": f"/raw/{cells[0]}.png", "stem": self.unique_stem(cells[0])}
            record.update({"height": 8, "width": 8, "patient_id": cells[1]})
            yield ConvertedImage(record, [{"bbox": [1, 1, 2, 2]}], calc)


def test_converter_base_runs_the_skeleton(tmp_path, capsys):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "toy.txt").write_text("a p1 3 4\nbad\na p2\nc p1\n")
    out = tmp_path / "out"
    summary = ToyConverter.convert(root, out, seed=2, hash_files=False, verbose=False)
    assert summary["out"] == str(out) and summary["images"] == 3 and summary["dataset"] == "toy"
    assert summary["problems"] == {"error": 1, "warning": 0, "note": 0}
    masses, calcs = read_json(out / "masses.json"), read_json(out / "calcifications.json")
    assert [im["id"] for im in masses["images"]] == [1, 2, 3]  # in the order images() yields
    assert [im["stem"] for im in masses["images"]] == ["a", "a_2", "c"]
    assert [a["image_id"] for a in masses["annotations"]] == [1, 2, 3]
    assert masses["info"] == {"source": "Toy", "root": str(root.resolve())}
    assert [im["mask_file"] for im in calcs["images"]] == ["calc_masks/a.png", None, None]
    (calc,) = calcs["annotations"]
    assert calc["image_id"] == 1 and calc["point"] == [3, 4] and calc["calc_type"] == "dot"
    split = read_json(out / "split.json")
    by_stem = {im["stem"]: im["split"] for im in masses["images"]}
    assert split["seed"] == 2 and by_stem["a"] == by_stem["c"]  # one patient, one split
    assert read_json(out / "conversion_report.json")["problems"][0]["row"] == 2

    # the command line: same flags for every converter, exit code 2 with one error line
    argv = ["--root", str(root), "--out", str(tmp_path / "cli"), "--no-hash"]
    assert ToyConverter.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert ToyConverter.main(argv) == 2  # not empty, no --overwrite
    assert "output folder is not empty" in capsys.readouterr().err
    assert ToyConverter.main([*argv, "--overwrite"]) == 0
    assert "toy: 1 errors" in capsys.readouterr().err  # the problem summary
    assert ToyConverter.build_parser().description == "Convert Toy into the canonical dataset form."

    # nothing converts: InputError naming the download, no output folder
    (root / "toy.txt").write_text("bad\n")
    with pytest.raises(InputError, match="no image could be converted"):
        ToyConverter.convert(root, tmp_path / "none", verbose=False)
    assert not (tmp_path / "none").exists()
