"""The paper's data recipe (§3.3): whole canonical folders as training data, the recipe YAML (CPU)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.build import get_detection_dataset_dicts  # noqa: E402

import mass_det  # noqa: E402,F401  (registration)
from common.errors import InputError  # noqa: E402
from mass_det.config import get_mass_det_cfg, parse_canonical_roots  # noqa: E402
from mass_det.data.register import (
    register_canonical,  # noqa: E402
    register_mass_datasets,  # noqa: E402
)

CONFIG_DIR = Path(mass_det.__file__).parent / "configs"
RECIPE = CONFIG_DIR / "faster_rcnn_R50_FPN_FL_NL_paper_data.yaml"
INSTANT = CONFIG_DIR / "quick_schedules" / "mass_det_instant_test.yaml"
RECIPE_PREFIXES = ("cbis_ddsm", "inbreast", "bcdr")


@pytest.fixture(scope="module")
def roots(synthetic_dataset):
    """Three tiny synthetic canonical folders (3 patients, one CC image each)."""
    return {
        prefix: synthetic_dataset(n=3, seed=seed + 11, height=384, width=320, views=("CC",))
        for seed, prefix in enumerate(RECIPE_PREFIXES)
    }


@pytest.fixture
def catalog():
    """Names registered through ``catalog.append`` are removed afterwards (the catalog is global)."""
    names: list[str] = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _image_ids(root):
    return sorted(im["id"] for im in json.loads((Path(root) / "masses.json").read_text())["images"])


def test_all_holds_every_image_of_the_root(roots, catalog):
    prefixes = {}
    for key in ("cbis_ddsm", "inbreast"):
        prefix = f"t{uuid.uuid4().hex[:8]}"
        names = register_canonical(roots[key], prefix)
        catalog += names
        assert names == [
            f"{prefix}_{k}_{s}" for k in ("mass", "calc") for s in ("train", "val", "test", "all")
        ]
        assert register_canonical(roots[key], prefix) == names  # idempotent
        prefixes[key] = prefix
    for key, prefix in prefixes.items():
        everything = DatasetCatalog.get(f"{prefix}_mass_all")
        assert sorted(d["image_id"] for d in everything) == _image_ids(roots[key])
        assert {d["split"] for d in everything} >= {"train", "val"}  # whatever the split
        by_split = sum(len(DatasetCatalog.get(f"{prefix}_mass_{s}")) for s in ("train", "val", "test"))
        assert len(everything) == by_split
        assert len(DatasetCatalog.get(f"{prefix}_calc_all")) == len(everything)
        assert all(d["file_name"].startswith(str(Path(roots[key]).resolve())) for d in everything)
        meta = MetadataCatalog.get(f"{prefix}_mass_all")
        assert meta.thing_classes == ["mass"] and meta.evaluator_type == "deeplima_froc"
    # the two roots stay apart
    a, b = (DatasetCatalog.get(f"{p}_mass_all") for p in prefixes.values())
    assert not {d["file_name"] for d in a} & {d["file_name"] for d in b}


def test_recipe_names_datasets_that_exist_once_its_roots_are_registered(roots, catalog):
    default = get_mass_det_cfg(str(RECIPE))
    assert [p for p, _ in parse_canonical_roots(default.DATASETS.CANONICAL.ROOTS)] == list(
        RECIPE_PREFIXES
    )
    assert default.DATASETS.TRAIN == ("cbis_ddsm_mass_train", "inbreast_mass_all", "bcdr_mass_all")
    assert default.DATASETS.TEST == ("cbis_ddsm_mass_val",)
    assert default.MODEL.FOCAL_LOSS.ENABLED and default.MODEL.NONLOCAL.ENABLED  # the paper's model

    opts = ["DATASETS.CANONICAL.ROOTS", str([f"{p}={roots[p]}" for p in RECIPE_PREFIXES])]
    cfg = get_mass_det_cfg(str(RECIPE), opts)
    catalog += register_mass_datasets(cfg)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        assert name in DatasetCatalog.list(), name
    train = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    expected = (
        len(DatasetCatalog.get("cbis_ddsm_mass_train"))
        + len(_image_ids(roots["inbreast"]))
        + len(_image_ids(roots["bcdr"]))
    )
    assert len(train) == expected
    cbis = {d["file_name"] for d in DatasetCatalog.get("cbis_ddsm_mass_val")}
    assert cbis and not cbis & {d["file_name"] for d in train}  # validation never trains


def test_missing_root_is_one_error_naming_it_when_used(tmp_path, catalog):
    missing = tmp_path / "not_converted"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    catalog += register_canonical(missing, prefix)  # registering is fine: loading is lazy
    with pytest.raises(InputError) as err:
        DatasetCatalog.get(f"{prefix}_mass_all")
    message = str(err.value)
    assert str(missing) in message and f"{prefix}_mass_all" in message
    assert "\n" not in message and "converter" in message


def test_train_net_stops_on_a_missing_root_with_one_line(tmp_path, catalog):
    from mass_det.train_net import cli

    prefix = f"t{uuid.uuid4().hex[:8]}"
    missing = tmp_path / "bcdr"
    argv = ["--config-file", str(INSTANT), "MODEL.DEVICE", "cpu",
            "DATASETS.CANONICAL.ROOTS", f"['{prefix}={missing}']",
            "DATASETS.TRAIN", f"('{prefix}_mass_all',)", "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(tmp_path / "out")]
    catalog += [f"{prefix}_{k}_{s}" for k in ("mass", "calc") for s in ("train", "val", "test", "all")]
    with pytest.raises(SystemExit) as err:
        cli(argv)
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert str(missing) in message and f"{prefix}_mass_all" in message


def test_a_prefix_given_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        parse_canonical_roots(["a=data/x", "a=data/y"])
