"""common.canonical (reader) and mass_det.data.register on a tiny canonical folder written by hand."""

from __future__ import annotations

import sys
import uuid

import numpy as np
import pytest

from common.canonical import BOX_MODE_XYWH_ABS, load_canonical_dicts
from common.errors import InputError
from common.io import atomic_write_json, atomic_write_png
from datasets.canonical import CALC_CATEGORIES, MASS_CATEGORIES


def _image(i, split, patient, mask_file=None):
    return {
        "id": i,
        "file_name": f"images/{i}.png",
        "stem": f"img{i}",
        "height": 48,
        "width": 64,
        "patient_id": patient,
        "laterality": "L",
        "view": "CC",
        "pixel_spacing": [0.1, 0.1],
        "density": 2,
        "split": split,
        "mask_file": mask_file,
    }


@pytest.fixture
def canonical(tmp_path):
    images = [
        _image(1, "train", "p1", "calc_masks/img1.png"),
        _image(2, "val", "p2"),
        _image(3, "test", "p3"),
    ]
    for im in images:
        atomic_write_png(tmp_path / im["file_name"], np.zeros((48, 64), np.uint8))
    mask = np.zeros((48, 64), np.uint8)
    mask[10:12, 20:23] = 255
    atomic_write_png(tmp_path / "calc_masks/img1.png", mask)
    masses = {
        "images": [{k: v for k, v in im.items() if k != "mask_file"} for im in images],
        "categories": MASS_CATEGORIES,
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [5, 6, 10, 12],
                "area": 120,
                "iscrowd": 0,
                "pathology": "MALIGNANT",
            },
            {
                "id": 2,
                "image_id": 3,
                "category_id": 1,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 0,
            },
        ],
    }
    calcs = {
        "images": images,
        "categories": CALC_CATEGORIES,
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [20, 10, 3, 2],
                "area": 6,
                "iscrowd": 0,
                "calc_type": "dot",
                "point": [21, 10],
            },
        ],
    }
    atomic_write_json(tmp_path / "masses.json", masses)
    atomic_write_json(tmp_path / "calcifications.json", calcs)
    return tmp_path


def test_mass_dicts(canonical):
    all_ = load_canonical_dicts(canonical, "mass")
    assert [d["image_id"] for d in all_] == [1, 2, 3]
    train = load_canonical_dicts(canonical, "mass", "train")
    assert len(train) == 1
    d = train[0]
    assert d["file_name"] == str((canonical / "images/1.png").resolve())
    assert (d["height"], d["width"], d["stem"], d["patient_id"]) == (48, 64, "img1", "p1")
    assert d["pixel_spacing"] == [0.1, 0.1] and d["density"] == 2 and d["split"] == "train"
    assert d["annotations"] == [
        {
            "bbox": [5.0, 6.0, 10.0, 12.0],
            "bbox_mode": BOX_MODE_XYWH_ABS,
            "category_id": 0,
            "pathology": "MALIGNANT",
        }
    ]
    assert load_canonical_dicts(canonical, "mass", "val")[0]["annotations"] == []
    assert "mask_file" not in d


def test_calc_dicts(canonical):
    train = load_canonical_dicts(canonical, "calc", "train")
    (d,) = train
    assert d["mask_file"] == str((canonical / "calc_masks/img1.png").resolve())
    (a,) = d["annotations"]
    assert a["calc_type"] == "dot" and a["point"] == [21, 10] and a["category_id"] == 0
    assert load_canonical_dicts(canonical, "calc", "val")[0]["mask_file"] is None


def test_load_does_not_import_detectron2(canonical):
    before = "detectron2" in sys.modules
    load_canonical_dicts(canonical, "calc")
    assert ("detectron2" in sys.modules) == before


def test_bad_inputs(tmp_path, canonical):
    with pytest.raises(InputError, match="masses.json"):
        load_canonical_dicts(tmp_path / "nowhere", "mass")
    with pytest.raises(ValueError):
        load_canonical_dicts(canonical, "lesion")
    with pytest.raises(ValueError):
        load_canonical_dicts(canonical, "mass", "training")


def test_register_canonical_idempotent(canonical):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from mass_det.data.register import register_all, register_canonical

    prefix = f"t{uuid.uuid4().hex[:8]}"
    names = register_canonical(canonical, prefix)
    assert names == [
        f"{prefix}_{k}_{s}" for k in ("mass", "calc") for s in ("train", "val", "test", "all")
    ]
    assert register_canonical(canonical, prefix) == names  # second call is a no-op, no error
    assert register_all({prefix: canonical}) == names
    assert len(DatasetCatalog.get(f"{prefix}_mass_test")[0]["annotations"]) == 1
    assert [d["image_id"] for d in DatasetCatalog.get(f"{prefix}_mass_all")] == [1, 2, 3]
    assert [d["image_id"] for d in DatasetCatalog.get(f"{prefix}_calc_all")] == [1, 2, 3]
    assert DatasetCatalog.get(f"{prefix}_calc_train")[0]["annotations"][0]["calc_type"] == "dot"
    meta = MetadataCatalog.get(f"{prefix}_calc_val")
    assert meta.thing_classes == ["calcification"]
    assert meta.evaluator_type == "deeplima_froc"
    assert meta.json_file.endswith("calcifications.json")
    assert MetadataCatalog.get(f"{prefix}_mass_train").thing_classes == ["mass"]
